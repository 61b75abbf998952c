"""The shipped pam_mfa.so: what it exports, how it is linked, where it installs."""

from __future__ import annotations

import subprocess
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent / "pam_module"


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_only_the_two_pam_entry_points_are_exported(pam_module: Path) -> None:
    """The dynamic symbol table holds pam_sm_authenticate and pam_sm_setcred and
    nothing else, so no helper can clash with or be called by the host program."""
    defined = {
        line.split()[-1]
        for line in _run("nm", "-D", "--defined-only", str(pam_module)).splitlines()
    }
    assert defined == {"pam_sm_authenticate", "pam_sm_setcred"}


def test_module_is_linked_hardened_against_libpam(pam_module: Path) -> None:
    """Full RELRO (BIND_NOW plus GNU_RELRO), a stack protector, and libpam as a
    declared dependency: what the Makefile promises is in the binary."""
    dynamic = _run("readelf", "-d", str(pam_module))
    assert "BIND_NOW" in dynamic
    assert "libpam.so.0" in dynamic
    assert "GNU_RELRO" in _run("readelf", "-l", "-W", str(pam_module))
    assert "__stack_chk_fail" in _run("nm", "-D", "--undefined-only", str(pam_module))


def test_make_install_targets_the_system_pam_directory(tmp_path: Path) -> None:
    """`make install` goes to Debian's multiarch PAM directory by default and
    PAMDIR= redirects it; the installed file is the module, mode 0644."""
    dry_run = _run("make", "-s", "-n", "-C", str(MODULE_DIR), "install")
    assert "/usr/lib/x86_64-linux-gnu/security/pam_mfa.so" in dry_run
    _run("make", "-s", "-C", str(MODULE_DIR), "install", f"PAMDIR={tmp_path}/security")
    installed = tmp_path / "security" / "pam_mfa.so"
    assert installed.read_bytes() == (MODULE_DIR / "pam_mfa.so").read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o644

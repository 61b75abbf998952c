"""scripts/install.sh's decisions, checked alone: the script is sourced (it stops before
installing anything when sourced) and its functions run on files in a temporary directory,
so neither /etc/pam.d nor a running mfad is touched. The install itself changes the host
and is not run here. Every bash here runs as `nobody`: should the script ever fail to stop
when sourced, it stops at its root check instead of installing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install.sh"


def as_nobody(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`bash -c SCRIPT ARGS` as `nobody` ($0 is "bash" unless ARGS gives it)."""
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )


def sourced(call: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`call ARGS` in a bash (as `nobody`) that has sourced install.sh."""
    return as_nobody(f'source "{SCRIPT}" && {call} "$@"', "bash", *args)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory `nobody` can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mfa-install-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sourcing_the_script_installs_nothing() -> None:
    """Sourcing install.sh defines its functions and returns at once, whatever $0 says
    (the script's own path included): no root check, no apt, no output."""
    result = sourced("type", "describe_in_force")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("describe_in_force is a function")
    named = as_nobody('source "$0" && type say', str(SCRIPT))
    assert (named.returncode, named.stderr) == (0, ""), named.stderr


def test_a_pid_file_of_a_process_gone_is_passed_over_quietly(shared_tmp: Path) -> None:
    """Run again after mfad has gone (its pid file left behind), the script neither prints
    a /proc error nor signals anything: the pid is not an mfad's. A live process that is
    not mfad is not taken for one; a live mfad is; a pid file without a pid is ignored."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = shared_tmp / "mfad.pid"
    pid_file.write_text(f"{gone.pid}\n")

    result = sourced("running_mfad_pid", str(pid_file))

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    with subprocess.Popen(["sleep", "30"]) as other:
        pid_file.write_text(f"{other.pid}\n")
        assert sourced("running_mfad_pid", str(pid_file)).stdout == ""
        other.kill()
    with subprocess.Popen(["bash", "-c", "exec -a /usr/local/sbin/mfad sleep 30"]) as mfad:
        pid_file.write_text(f"{mfad.pid}\n")
        for _ in range(100):  # until bash has exec'd
            if sourced("running_mfad_pid", str(pid_file)).stdout == f"{mfad.pid}\n":
                break
        else:
            raise AssertionError("a live mfad was not recognised")
        mfad.kill()
    pid_file.write_text("not a pid\n")
    assert sourced("running_mfad_pid", str(pid_file)).stdout == ""


def _pam_d(base: Path, files: dict[str, str]) -> Path:
    pam_d = base / "pam.d"
    pam_d.mkdir()
    for name, text in files.items():
        (pam_d / name).write_text(text)
    return pam_d


def _config(base: Path, **settings: object) -> Path:
    conf = base / "mfad.yaml"
    conf.write_text(yaml.safe_dump(settings))
    return conf


def test_with_no_service_using_the_module_it_says_nothing_asks_for_a_code(
    shared_tmp: Path,
) -> None:
    """A fresh install (pam_mfa.so in no PAM file; a commented-out line does not count)
    ends with "Nothing asks for a code yet" and the steps to require one."""
    pam_d = _pam_d(
        shared_tmp,
        {
            "sshd": "@include common-auth\n# auth required pam_mfa.so\n",
            "common-auth": "auth required pam_unix.so\n",
        },
    )

    result = sourced("describe_in_force", str(pam_d), str(_config(shared_tmp)), sys.executable)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"Nothing asks for a code yet: no PAM service in {pam_d} uses pam_mfa.so."
    )
    assert "add:\n         auth required pam_mfa.so" in result.stdout
    assert result.stderr == ""


def test_a_rerun_says_which_services_ask_for_codes_and_under_which_mode(
    shared_tmp: Path,
) -> None:
    """Run again on a machine where pam_mfa.so is in use, the script does not claim that
    nothing asks for a code: it names each PAM service that uses the module, directly or
    through an @include (common-auth) or an `auth include`, with the mode mfad.yaml gives
    it (`services` over `mode`) and what that means."""
    pam_d = _pam_d(
        shared_tmp,
        {
            "common-auth": "auth required pam_unix.so\nauth required pam_mfa.so\n",
            "sshd": "@include common-auth\naccount required pam_unix.so\n",
            "sudo": "auth   include   common-auth\n",
            "login": "auth required pam_unix.so\n",
            "cron": "account required pam_unix.so\n",
        },
    )
    conf = _config(shared_tmp, mode="optional", services={"sudo": "required", "common-auth": "off"})

    result = sourced("describe_in_force", str(pam_d), str(conf), sys.executable)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"pam_mfa.so is in force for these PAM services ({pam_d}):",
        "  common-auth  mode off: nobody is asked for a code",
        "  sshd         mode optional: users who enrolled, or whom you require (mfa require, "
        "require_groups), give a code",
        "  sudo         mode required: every user not exempt gives a code, or enrols at the "
        "next login",
        '"mfa list" shows who is enrolled, pending or exempt.',
    ]

"""`mfa doctor` on a machine built in temporary directories: a real mfad, Debian's PAM
files with pam_mfa.so put in by `mfa pam install`, an sshd_config read through the real
`sshd -T -f`. First the correct setup, all OK; then each broken setup of issue 13 on its
own, seen as a FAIL with its fix.

The one seam: whether the system clock is synchronised is asked of `timedatectl`, and
these machines have no systemd; a test puts a `timedatectl` of its own first on PATH
(printing what the real one prints for `show --property=NTPSynchronized --value`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Daemon, MakeUser, totp_now
from pamfiles import debian_pam_dir
from wire import PamWire

from mfa_cli import pamstack
from mfa_cli.main import cli
from mfa_wire.framing import Frame

PASSWORD = "correct horse battery staple 42"
SSHD_CONFIG = (
    "UsePAM yes\n"
    "KbdInteractiveAuthentication yes\n"
    "PasswordAuthentication no\n"
    "AuthenticationMethods keyboard-interactive\n"
)


@dataclass
class Machine:
    mfad: Daemon
    pam_dir: Path
    sshd_config: Path
    host_key: Path
    bin_dir: Path
    module: Path

    def doctor(self, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
        """`mfa doctor --json` against this machine: the exit code and the checks by name."""
        result = CliRunner().invoke(
            cli,
            [
                "--socket",
                str(self.mfad.control_socket),
                "doctor",
                "--json",
                "--config",
                str(self.mfad.config_path),
                "--pam-dir",
                str(self.pam_dir),
                "--sshd-config",
                str(self.sshd_config),
                *extra,
            ],
        )
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        out = json.loads(result.stdout)
        assert out["ok"] == (result.exit_code == 0)
        return result.exit_code, {c["name"]: c for c in out["checks"]}

    def sshd(self, text: str) -> None:
        self.sshd_config.write_text(f"HostKey {self.host_key}\n{text}")

    def install(self, service: str, *extra: str) -> None:
        result = CliRunner().invoke(
            cli,
            [
                "pam",
                "install",
                service,
                "--pam-dir",
                str(self.pam_dir),
                "--backup-dir",
                str(self.pam_dir.parent / "backup"),
                "--module",
                str(self.module),
                "--module-arg",
                f"socket={self.mfad.pam_socket}",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output

    def clock(self, synchronised: str | None) -> None:
        """Put a `timedatectl` answering `synchronised` first on PATH (None: no tool at all)."""
        tool = self.bin_dir / "timedatectl"
        if synchronised is None:
            os.environ["PATH"] = str(self.bin_dir)
            tool.unlink(missing_ok=True)
            return
        tool.write_text(f"#!/bin/sh\necho {synchronised}\n")
        tool.chmod(0o755)


@pytest.fixture
def machine(
    mfad: Daemon, pam_module: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Machine]:
    """The correct setup: pam_mfa.so installed in sshd, login, sudo and su; sshd asking
    for password + code; a synchronised clock."""
    host_key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    m = Machine(
        mfad,
        debian_pam_dir(tmp_path / "pam.d"),
        tmp_path / "sshd_config",
        host_key,
        bin_dir,
        pam_module,
    )
    m.sshd(SSHD_CONFIG)
    m.clock("yes")
    for service in ("sshd", "login", "sudo", "su"):
        m.install(service)
    yield m


def failed(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: c for name, c in checks.items() if c["status"] == "FAIL"}


def test_the_correct_setup_is_all_ok(machine: Machine) -> None:
    """`pam install` on every default service, sshd with password + code, the daemon up
    with its files as it made them: every check is OK, and the exit code is 0."""
    code, checks = machine.doctor()

    assert {n: (c["status"], c["summary"]) for n, c in checks.items() if c["status"] != "OK"} == {}
    assert code == 0
    assert set(checks) >= {
        "daemon", "key", "files.key", "files.config", "files.store", "files.audit",
        "files.sockets", "pam.sshd", "pam.login", "pam.sudo", "pam.su", "pam.su-l",
        "sshd.pam", "sshd.methods", "clock.sync", "clock.offsets",
    }  # fmt: skip
    assert "in force: password + code" in checks["sshd.methods"]["summary"]
    assert "after the password" in checks["pam.su-l"]["summary"]


def test_text_output_names_each_check_and_its_fix(machine: Machine) -> None:
    """Without --json: one line per check, the fix on the line below; a WARN alone (a
    default service without the module) does not make the exit code non-zero."""
    (machine.pam_dir / "sudo").write_text("@include common-auth\n")
    result = CliRunner().invoke(
        cli,
        ["--socket", str(machine.mfad.control_socket), "doctor", "--config",
         str(machine.mfad.config_path), "--pam-dir", str(machine.pam_dir),
         "--sshd-config", str(machine.sshd_config)],
    )  # fmt: skip
    assert result.exit_code == 0
    assert "\nWARN  pam.sudo " in "\n" + result.stdout
    assert "fix: `mfa pam install sudo`" in result.stdout


@pytest.mark.parametrize(
    ("stack", "said", "fix"),
    [
        (
            "auth sufficient pam_unix.so\n{mfa}\nauth required pam_deny.so\n",
            "runs after a failed password",
            "requisite",
        ),
        ("@include common-auth\n{optional}\n", "a wrong code does not fail the login", "required"),
        ("auth required pam_unix.so\n{mfa}\n", "runs after a failed password", "requisite"),
        (
            "auth [success=2 default=ignore] pam_unix.so\nauth requisite pam_deny.so\n{mfa}\n"
            "auth required pam_permit.so\n",
            "can be bypassed",
            "move the pam_mfa.so line",
        ),
    ],
    ids=["after-sufficient-unix", "optional", "after-required-unix", "jumped-over"],
)
def test_a_bypassable_stack_fails(machine: Machine, stack: str, said: str, fix: str) -> None:
    """pam_mfa.so after a `sufficient` pam_unix, `optional`, after a `required` password
    module, or jumped over: pam.sudo is FAIL, saying why and what to change."""
    line = f"{machine.module} socket={machine.mfad.pam_socket}"
    text = stack.format(mfa=f"auth required {line}", optional=f"auth optional {line}")
    (machine.pam_dir / "sudo").write_text(text)

    code, checks = machine.doctor()

    assert code == 1
    assert list(failed(checks)) == ["pam.sudo"]
    assert said in checks["pam.sudo"]["summary"]
    assert fix in checks["pam.sudo"]["fix"]


def test_a_service_named_in_the_config_without_the_module_fails(machine: Machine) -> None:
    """`services: {sudo: required}` and no pam_mfa.so in sudo: FAIL (not merely WARN)."""
    machine.mfad.restart(services={"sudo": "required"})
    (machine.pam_dir / "sudo").write_text("@include common-auth\n")

    code, checks = machine.doctor()

    assert code == 1
    assert checks["pam.sudo"]["status"] == "FAIL"
    assert checks["pam.sudo"]["fix"].startswith("`mfa pam install sudo`")


def test_the_module_asking_another_socket_fails(machine: Machine) -> None:
    """A pam_mfa.so line with socket= other than mfad's fails every login: FAIL."""
    path = machine.pam_dir / "login"
    path.write_text(path.read_text().replace(f"socket={machine.mfad.pam_socket}", "socket=/x"))

    _, checks = machine.doctor()

    assert checks["pam.login"]["status"] == "FAIL"
    assert f"socket={machine.mfad.pam_socket}" in checks["pam.login"]["fix"]


def test_a_world_readable_key_fails(machine: Machine) -> None:
    """A key file others can read: files.key FAIL with the chmod that fixes it."""
    machine.mfad.key_path.chmod(0o644)

    code, checks = machine.doctor()

    assert code == 1
    assert checks["files.key"]["status"] == "FAIL"
    assert "readable by others" in checks["files.key"]["summary"]
    assert f"chmod 600 {machine.mfad.key_path}" in checks["files.key"]["fix"]


def test_a_sealing_key_or_mail_password_others_can_read_fails(machine: Machine) -> None:
    """The audit sealing key (once seal-init made it) and the mail password are secrets
    like the key file: readable by others, each is a FAIL with its chmod."""
    assert machine.mfad.request("audit_seal_init")["ok"]
    password = machine.mfad.tmp / "smtp-password"
    password.write_text("not-used\n")
    password.chmod(0o600)
    machine.mfad.restart(
        smtp={"host": "127.0.0.1", "username": "mfad", "password_file": str(password)}
    )
    code, checks = machine.doctor()
    assert checks["files.seal_key"]["status"] == "OK", checks["files.seal_key"]
    assert checks["files.smtp"]["status"] == "OK", checks["files.smtp"]

    seal_key = Path(machine.mfad.request("health")["config"]["audit_seal_key"])
    seal_key.chmod(0o644)
    password.chmod(0o644)
    code, checks = machine.doctor()
    assert code == 1
    for name, path in (("files.seal_key", seal_key), ("files.smtp", password)):
        assert checks[name]["status"] == "FAIL", checks[name]
        assert f"chmod 600 {path}" in checks[name]["fix"]


def test_a_user_pam_socket_closed_to_users_is_a_warning(machine: Machine) -> None:
    """The user PAM socket must be open to every user (mfad answers each for their own
    account only): closed, screen lockers cannot check codes, a WARN naming them."""
    user_socket = machine.mfad.pam_socket.with_name("pam-user.sock")
    user_socket.chmod(0o600)

    _, checks = machine.doctor()

    assert checks["files.sockets"]["status"] == "WARN"
    assert "screen lockers" in checks["files.sockets"]["summary"]
    assert f"chmod 666 {user_socket}" in checks["files.sockets"]["fix"]


def test_a_stopped_daemon_fails(machine: Machine) -> None:
    """mfad not running: daemon FAIL with how to start it; the rest is read from files."""
    machine.mfad.stop()

    code, checks = machine.doctor()

    assert code == 1
    assert checks["daemon"]["status"] == "FAIL"
    assert "not running" in checks["daemon"]["summary"]
    assert "systemctl start mfad" in checks["daemon"]["fix"]
    assert checks["pam.sshd"]["status"] == "OK"  # the settings came from mfad.yaml


def test_a_wrong_key_fails(machine: Machine) -> None:
    """The key file replaced under a running mfad (its next start would refuse): key FAIL."""
    machine.mfad.key_path.unlink()
    subprocess.run(
        [sys.executable, "-m", "mfad", "--generate-key", str(machine.mfad.key_path)],
        check=True,
        capture_output=True,
    )

    code, checks = machine.doctor()

    assert code == 1
    assert checks["key"]["status"] == "FAIL"
    assert "is not the key the store's secrets were sealed with" in checks["key"]["summary"]
    assert "restore the original" in checks["key"]["fix"]


def test_sshd_without_keyboard_interactive_fails(machine: Machine) -> None:
    """KbdInteractiveAuthentication no (Debian's own default): sshd can never ask for the
    code. sshd.pam FAIL."""
    machine.sshd("UsePAM yes\nKbdInteractiveAuthentication no\nPasswordAuthentication yes\n")

    code, checks = machine.doctor()

    assert code == 1
    assert checks["sshd.pam"]["status"] == "FAIL"
    assert checks["sshd.pam"]["fix"].startswith("KbdInteractiveAuthentication yes")


def test_key_only_logins_still_open_fail(machine: Machine) -> None:
    """No AuthenticationMethods: a user with an authorized key logs in on the key alone
    and is never asked for a code. sshd.methods FAIL, naming the way in and the fix."""
    machine.sshd("UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication no\n")

    code, checks = machine.doctor()

    assert code == 1
    assert "`publickey` alone" in checks["sshd.methods"]["summary"]
    assert "AuthenticationMethods keyboard-interactive" in checks["sshd.methods"]["fix"]


def test_a_match_block_is_fine_for_an_exempt_service_account_only(
    machine: Machine, make_user: MakeUser
) -> None:
    """`Match User svc` with a key alone: FAIL while svc must give a code (mode required),
    OK once svc is exempt in mfad (the service-account deployment)."""
    svc = make_user()
    machine.sshd(SSHD_CONFIG + f"Match User {svc}\n    AuthenticationMethods publickey\n")

    code, checks = machine.doctor()
    assert code == 1
    assert f"{svc} (`publickey` alone)" in checks["sshd.methods"]["summary"]
    assert "mfa exempt" in checks["sshd.methods"]["fix"]

    assert machine.mfad.request("exempt", user=svc, reason="service account")["ok"]
    code, checks = machine.doctor()
    assert checks["sshd.methods"]["status"] == "OK", checks["sshd.methods"]
    assert svc in checks["sshd.methods"]["summary"]


def test_key_stack_needs_the_key_for_everyone(machine: Machine) -> None:
    """The key stack (no password in PAM) with AuthenticationMethods keyboard-interactive
    lets anyone in on the code alone, or on nothing if they need no code: FAIL; with
    publickey,keyboard-interactive it is the key + code deployment, OK."""
    machine.install("sshd", "--mode", "key")

    code, checks = machine.doctor()
    assert code == 1
    assert "the code alone" in checks["sshd.methods"]["summary"]
    assert "publickey,keyboard-interactive" in checks["sshd.methods"]["fix"]

    machine.sshd(SSHD_CONFIG.replace("keyboard-interactive\n", "publickey,keyboard-interactive\n"))
    code, checks = machine.doctor()
    assert code == 0, failed(checks)
    assert "in force: public key + code" in checks["sshd.methods"]["summary"]


def test_the_key_stack_without_pam_permit_fails(machine: Machine) -> None:
    """pam_mfa.so alone in sshd's stack (the finding): users who need no code are refused.
    pam.sshd FAIL, with the pam_permit.so line as the fix."""
    line = f"auth required {machine.module} socket={machine.mfad.pam_socket}\n"
    (machine.pam_dir / "sshd").write_text(line)

    _, checks = machine.doctor()

    assert checks["pam.sshd"]["status"] == "FAIL"
    assert "users who need no code are refused" in checks["pam.sshd"]["summary"]
    assert "pam_permit.so" in checks["pam.sshd"]["fix"]


@pytest.mark.parametrize(("answer", "status"), [("no", "FAIL"), (None, "WARN")])
def test_clock_not_synchronised_or_unknown(
    machine: Machine, answer: str | None, status: str
) -> None:
    """timedatectl says the clock is not synchronised: FAIL; nothing can tell: WARN."""
    machine.clock(answer)

    _, checks = machine.doctor()

    assert checks["clock.sync"]["status"] == status
    assert "NTP" in checks["clock.sync"]["fix"] or "ntp" in checks["clock.sync"]["fix"]


def test_users_clock_offsets_all_one_way_point_at_the_host_clock(
    machine: Machine, make_user: MakeUser
) -> None:
    """Three users whose codes all come one step ahead: the spread is shown and, since
    most are off the same way, a WARN that this host's clock is likely wrong."""
    for _ in range(3):
        user = make_user()
        secret = machine.mfad.enroll(user)
        with PamWire(machine.mfad.pam_socket) as wire:
            frames = wire.login(user, [totp_now(secret, +1)], service="sshd")
        assert frames[-1] == Frame("R", "S")

    _, checks = machine.doctor()

    assert checks["clock.offsets"]["status"] == "WARN"
    assert "+1 to +1 steps" in checks["clock.offsets"]["summary"]
    assert "this host's clock is likely wrong" in checks["clock.offsets"]["summary"]


def test_the_health_op_is_for_administrators_only(machine: Machine, make_user: MakeUser) -> None:
    """A user who is not an administrator running `mfa doctor`: mfad refuses its health
    op (`forbidden`, audited with the actor); the daemon check says to run it as root."""
    user = make_user()

    run = machine.mfad.mfa_as(user, "doctor", "--json", "--config", str(machine.mfad.config_path))

    assert run.stdout, run.stderr
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert run.returncode == 1
    assert checks["daemon"]["status"] == "FAIL"
    assert "only an administrator" in checks["daemon"]["summary"]
    assert "as root" in checks["daemon"]["fix"]
    [refusal] = [r for r in machine.mfad.audit() if r.get("op") == "health"]
    assert (refusal["outcome"], refusal["actor"]) == ("refused", user)


ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_snippets_are_what_doctor_accepts(machine: Machine) -> None:
    """etc/ssh/sshd_config.d/pam-mfa.conf as shipped is the password + code deployment,
    and with its key + code line in force and `pam install --mode key` the key + code
    one; etc/pam.d/sshd's stack is judged sound."""
    shipped = (ROOT / "etc/ssh/sshd_config.d/pam-mfa.conf").read_text()
    machine.sshd(shipped)
    code, checks = machine.doctor()
    assert code == 0, failed(checks)
    assert "in force: password + code" in checks["sshd.methods"]["summary"]

    machine.install("sshd", "--mode", "key")
    machine.sshd(
        shipped.replace("\nAuthenticationMethods keyboard-interactive\n", "\n").replace(
            "#AuthenticationMethods publickey", "AuthenticationMethods publickey"
        )
    )
    code, checks = machine.doctor()
    assert code == 0, failed(checks)
    assert "in force: public key + code" in checks["sshd.methods"]["summary"]

    (machine.pam_dir / "snippet").write_text((ROOT / "etc/pam.d/sshd").read_text())
    report = pamstack.analyse(machine.pam_dir, "snippet")
    assert report.ok and report.mode == "password", report.findings


def test_the_password_method_with_the_password_stack_is_a_warning(machine: Machine) -> None:
    """`PasswordAuthentication yes` beside keyboard-interactive: sshd's password method
    answers the code prompt with the password, so enrolled users fail that way and each
    try counts as a wrong code. WARN, with `PasswordAuthentication no` as the fix."""
    machine.sshd(
        "UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication yes\n"
        "AuthenticationMethods keyboard-interactive password\n"
    )

    code, checks = machine.doctor()

    assert code == 0
    assert checks["sshd.methods"]["status"] == "WARN"
    assert "answers the code prompt with the password" in checks["sshd.methods"]["summary"]
    assert checks["sshd.methods"]["fix"] == "PasswordAuthentication no"

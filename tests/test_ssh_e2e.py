"""Real SSH logins: OpenSSH's sshd with pam_unix then pam_mfa.so, mfad, and the `ssh` client.

One private sshd serves this module (tests/sshd.py: own port, host key and
PAM service through pam_wrapper; the system's sshd and /etc/pam.d untouched).
Each test points its PAM service at that test's own mfad and logs in as a
throwaway user the way a person would: typing the password, then the code.

What OpenSSH shows the user, found by running it: PAM's error messages
(PAM_ERROR_MSG) are not printed on their own but collected by sshd and sent
as the instruction text of the next keyboard-interactive request, so
"Incorrect verification code." appears just above the next "Verification
code: " prompt. After the last wrong code pam_mfa returns PAM_MAXTRIES; sshd
then sends the pending "Too many failed attempts..." text in an info request
without prompts (the client prints it), turns keyboard-interactive off for
the connection, and the client ends with "Permission denied ()." without
asking for the password again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from sshd import CODE_PROMPT, PASSWORD_PROMPT, PrivateSshd

pytestmark = pytest.mark.ssh

PASSWORD = "correct horse battery staple 42"
COMMAND = "echo logged-in-as-$(id -un)"
INCORRECT = "Incorrect verification code."
TOO_MANY = "Too many failed attempts with incorrect verification code."


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSshd]:
    server = PrivateSshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mfa_sshd(sshd: PrivateSshd, pam_module: Path, mfad: Daemon) -> PrivateSshd:
    """The shared sshd with pam_unix, then pam_mfa.so talking to this test's mfad."""
    sshd.set_pam(
        [
            "auth required pam_unix.so",
            f"auth required {pam_module} socket={mfad.pam_socket}",
        ]
    )
    return sshd


def logged_in(user: str) -> str:
    """The line the remote command prints: proof that a shell ran as `user`."""
    return f"logged-in-as-{user}"


def wrong_code(secret: str) -> str:
    """A six-digit code that no step near now would accept for `secret`."""
    near = {totp_now(secret, step) for step in range(-3, 4)}
    while True:
        code = f"{secrets.randbelow(10**6):06d}"
        if code not in near:
            return code


def audit_for(mfad: Daemon, user: str, event: str) -> list[dict[str, object]]:
    return [r for r in mfad.audit() if r.get("event") == event and r.get("user") == user]


def test_password_and_code_log_in(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """An enrolled user types the password, then the app's current code, and gets a shell."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)

    login = mfa_sshd.login(user, PASSWORD, [lambda: totp_now(secret)], COMMAND)

    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert logged_in(user) in login.output
    assert login.prompts == [PASSWORD_PROMPT, CODE_PROMPT]
    assert INCORRECT not in login.output
    [record] = audit_for(mfad, user, "login")
    assert record["outcome"] == "success"
    assert record["service"] == "sshd"
    assert record["rhost"] == "127.0.0.1"


def test_three_wrong_codes_are_refused(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Three wrong codes: told twice the code is wrong, then too many attempts; no shell."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    codes = [wrong_code(secret) for _ in range(3)]

    login = mfa_sshd.login(user, PASSWORD, codes, COMMAND)

    assert login.exit_status == 255
    assert logged_in(user) not in login.output
    assert login.prompts == [PASSWORD_PROMPT, CODE_PROMPT, CODE_PROMPT, CODE_PROMPT]
    assert login.output.count(INCORRECT) == 2
    assert TOO_MANY in login.output
    # PAM_MAXTRIES makes sshd end keyboard-interactive for this connection:
    # the client is not offered another round and lists no method left.
    assert "Permission denied ()." in login.output
    [record] = audit_for(mfad, user, "login")
    assert (record["outcome"], record["reason"]) == ("failure", "too_many_attempts")
    reasons = [r["reason"] for r in audit_for(mfad, user, "attempt")]
    assert reasons == ["incorrect_code"] * 3


def test_code_already_used_is_refused(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A code that just logged someone in is refused when typed again (RFC 6238 §5.2)."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    typed: list[str] = []

    def current_code() -> str:
        typed.append(totp_now(secret))
        return typed[-1]

    first = mfa_sshd.login(user, PASSWORD, [current_code], COMMAND)
    assert first.exit_status == 0, first.output
    assert logged_in(user) in first.output

    again = mfa_sshd.login(user, PASSWORD, [typed[0]], COMMAND)

    assert logged_in(user) not in again.output
    assert INCORRECT in again.output
    assert again.stopped, "after the replayed code the user is asked for another code"
    assert again.prompts == [PASSWORD_PROMPT, CODE_PROMPT]
    assert "replayed_code" in [r["reason"] for r in audit_for(mfad, user, "attempt")]


def test_daemon_down_refuses_login(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """With mfad stopped, the right password alone does not log in (fail closed)."""
    user = make_user(PASSWORD)
    mfad.enroll(user)
    mfad.stop()
    logged_before = mfa_sshd.stderr_text()

    login = mfa_sshd.login(user, PASSWORD, [], COMMAND)

    assert login.exit_status == 255
    assert logged_in(user) not in login.output
    assert CODE_PROMPT not in login.prompts
    # The client asks for the password again after each failed round, then gives up.
    assert login.count(PASSWORD_PROMPT) == 3
    assert "Permission denied (keyboard-interactive)." in login.output
    module_log = mfa_sshd.stderr_text()[len(logged_before) :]
    assert "mfad unreachable" in module_log
    assert "failing closed" in module_log


def test_fail_open_lets_password_alone_in_when_daemon_down(
    sshd: PrivateSshd, pam_module: Path, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """With `fail=open` on the PAM line and mfad stopped, the password alone logs in."""
    sshd.set_pam(
        [
            "auth required pam_unix.so",
            f"auth required {pam_module} socket={mfad.pam_socket} fail=open",
        ]
    )
    user = make_user(PASSWORD)
    mfad.enroll(user)
    mfad.stop()
    logged_before = sshd.stderr_text()

    login = sshd.login(user, PASSWORD, [], COMMAND)

    assert login.exit_status == 0, login.output + sshd.logs()
    assert logged_in(user) in login.output
    assert login.prompts == [PASSWORD_PROMPT]
    module_log = sshd.stderr_text()[len(logged_before) :]
    assert "mfad unreachable" in module_log
    assert "fail=open" in module_log

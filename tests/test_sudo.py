"""The real `sudo`, run by a throwaway user on a pseudo-terminal, with pam_unix then pam_mfa.so.

sudo authenticates with PAM_SILENT unless told otherwise (`pam_silent` in
sudoers), and libpam passes that flag to every module. pam_mfa.so still shows
mfad's ERROR text under it, so a refused code is explained, and tells mfad
(START ``silent=1``), which then refuses a user who must enrol with what to
do instead of a QR code the module would not show. sudo's own words around
them stay: "Sorry, try again." and, at the end, "N incorrect password
attempts" count every failed round, whichever module failed it.

The run happens in a private mount namespace (tests/privatepam.py): the
host's /etc/pam.d and /etc/sudoers are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from privatepam import PrivatePam, private_pam

PASSWORD = "correct horse battery staple 42"
SUDO_PROMPT = r"\[sudo\] password for \w+: "
CODE_PROMPT = "Verification code: "
COMMAND = ["sudo", "echo", "ran-as-root"]
INCORRECT = "Incorrect verification code."
TOO_MANY = "Too many failed attempts with incorrect verification code."
HOST_BLOCKED = re.compile(r"Too many failed attempts from this host; verification is blocked")
ENROL_FIRST = "Run `mfa enroll` in a terminal to set it up, then try again."


@pytest.fixture
def sudo(pam_module: Path, mfad: Daemon) -> Iterator[PrivatePam]:
    """A private sudo service: pam_unix then pam_mfa.so talking to this test's mfad; every
    user the test names in `sudo.sudoers` may run anything, asked every time."""
    with private_pam() as private:
        private.service(
            "sudo",
            ["auth required pam_unix.so", f"auth required {pam_module} socket={mfad.pam_socket}"],
        )
        yield private


def allow(sudo: PrivatePam, *users: str) -> None:
    rules = "".join(f"{user} ALL=(ALL) ALL\n" for user in users)
    sudo.sudoers(f"Defaults !lecture, timestamp_timeout=0, passwd_tries=3\n{rules}")


def wrong_code(secret: str) -> str:
    near = {totp_now(secret, step) for step in range(-3, 4)}
    return next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in near)


def test_sudo_with_password_and_code_runs_the_command(
    sudo: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """An enrolled user types the password, then the app's code, and sudo runs the command."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    allow(sudo, user)

    run = sudo.run(
        COMMAND,
        {SUDO_PROMPT: [PASSWORD], CODE_PROMPT: [lambda _shown: totp_now(secret)]},
        as_user=user,
    )

    assert run.exit_status == 0, run.output
    assert "ran-as-root" in run.output
    assert run.prompts == [SUDO_PROMPT, CODE_PROMPT]


def test_sudo_explains_wrong_codes_and_the_host_block(
    sudo: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Under sudo's PAM_SILENT a wrong code is not a bare re-prompt: the user reads
    "Incorrect verification code.", then "Too many failed attempts" after the third; and
    when sudo lets them try again, the block that guessing set is explained, not silent."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    allow(sudo, user)
    wrong = wrong_code(secret)

    run = sudo.run(
        COMMAND,
        {SUDO_PROMPT: [PASSWORD, PASSWORD], CODE_PROMPT: [wrong] * 4},
        as_user=user,
    )

    assert "ran-as-root" not in run.output
    assert run.output.count(INCORRECT) == 2, run.output
    assert TOO_MANY in run.output
    # the fourth wrong code from this machine blocks it for the user (lockout.source_deny)
    assert HOST_BLOCKED.search(run.output), run.output
    logins = [r for r in mfad.audit() if r.get("event") == "login" and r.get("user") == user]
    assert [r["reason"] for r in logins][:2] == ["too_many_attempts", "source_blocked"]
    assert {r["service"] for r in logins} == {"sudo"}


def test_sudo_tells_a_user_who_must_enrol_to_run_mfa_enroll(
    sudo: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A pending user under sudo is not shown a QR code they could not see (PAM_SILENT):
    the module would hide it. They are told plainly to run `mfa enroll` first."""
    user = make_user(PASSWORD)
    assert mfad.request("require", user=user)["ok"]
    allow(sudo, user)

    run = sudo.run(COMMAND, {SUDO_PROMPT: [PASSWORD], CODE_PROMPT: []}, as_user=user)

    assert "ran-as-root" not in run.output
    assert ENROL_FIRST in run.output, run.output
    assert CODE_PROMPT not in run.prompts
    assert "otpauth://" not in run.output and "Key:" not in run.output
    # (sudo asks for the password again; at that prompt the run stops)
    login = next(r for r in mfad.audit() if r.get("event") == "login" and r.get("user") == user)
    assert (login["reason"], login["enrolment_not_offered"]) == ("not_enrolled", "silent")
    status = mfad.request("status", user=user)
    assert (status["state"], status["enrolment_pending"]) == ("pending", False)

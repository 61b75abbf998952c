"""The real `su -` and `login`, on a pseudo-terminal, with pam_unix then pam_mfa.so.

`su -` (util-linux) runs the PAM service ``su-l``, not ``su``: a stack or a
`services:` rule for ``su`` alone does not cover it. `login` runs ``login``
with PAM_TTY set to its terminal. Both are run the way a person does (su by
another, unprivileged user; login as root on a terminal, as getty starts it),
in a private mount namespace (tests/privatepam.py) with the test's own
/etc/pam.d, so the host's PAM files, utmp and wtmp are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from privatepam import PrivatePam, private_pam

PASSWORD = "correct horse battery staple 42"
PASSWORD_PROMPT = "Password: "
CODE_PROMPT = "Verification code: "
SHELL_PROMPT = r"\$ "  # dash's PS1 for a user other than root; the test users' shell is /bin/sh


@pytest.fixture
def private(pam_module: Path, mfad: Daemon) -> Iterator[PrivatePam]:
    """`su-l` and `login` services: pam_unix, then pam_mfa.so talking to this test's mfad;
    `su` (without the dash) denies, so a login through it would show."""
    stack = ["auth required pam_unix.so", f"auth required {pam_module} socket={mfad.pam_socket}"]
    with private_pam() as pam:
        pam.service("su-l", stack)
        pam.service("login", stack)
        pam.service("su", ["auth required pam_deny.so"])
        yield pam


def logins_of(mfad: Daemon, user: str) -> list[dict[str, object]]:
    return [r for r in mfad.audit() if r.get("event") == "login" and r.get("user") == user]


def test_su_dash_with_password_and_code(
    private: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Another user runs `su - USER -c ...`: the target's password, then the target's code,
    and the command runs as the target, through the PAM service su-l."""
    caller = make_user()
    target = make_user(PASSWORD)
    secret = mfad.enroll(target)

    run = private.run(
        ["su", "-", target, "-c", "echo su-as-$(id -un)"],
        {PASSWORD_PROMPT: [PASSWORD], CODE_PROMPT: [lambda _shown: totp_now(secret)]},
        as_user=caller,
    )

    assert run.exit_status == 0, run.output
    assert f"su-as-{target}" in run.output
    assert run.prompts == [PASSWORD_PROMPT, CODE_PROMPT]
    [login] = logins_of(mfad, target)
    assert (login["outcome"], login["service"]) == ("success", "su-l")


def test_su_dash_with_a_wrong_code_is_refused(
    private: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """The right password and three wrong codes: su refuses, and the user read why."""
    caller = make_user()
    target = make_user(PASSWORD)
    mfad.enroll(target)

    run = private.run(
        ["su", "-", target, "-c", "echo su-as-$(id -un)"],
        {PASSWORD_PROMPT: [PASSWORD], CODE_PROMPT: ["000000", "000001", "000002"]},
        as_user=caller,
    )

    assert run.exit_status not in (0, None), run.output
    assert f"su-as-{target}" not in run.output
    assert "Too many failed attempts with incorrect verification code." in run.output
    # su's own line after it: pam_strerror(PAM_MAXTRIES)
    assert "su: Have exhausted maximum number of retries for service" in run.output


def test_login_on_a_terminal_with_password_and_code(
    private: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """`login USER` on a terminal: password, then code, then the user's shell runs."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)

    run = private.run(
        ["login", user],
        {
            PASSWORD_PROMPT: [PASSWORD],
            CODE_PROMPT: [lambda _shown: totp_now(secret)],
            SHELL_PROMPT: ["echo logged-in-as-$(id -un); exit"],
        },
    )

    assert f"logged-in-as-{user}" in run.output, run.output
    assert run.prompts == [PASSWORD_PROMPT, CODE_PROMPT, SHELL_PROMPT]
    [login] = logins_of(mfad, user)
    assert (login["outcome"], login["service"]) == ("success", "login")
    assert str(login["tty"]).startswith(("/dev/pts/", "pts/"))


def test_a_services_rule_for_su_covers_su_dash(
    private: PrivatePam, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """`services: {su: off}` also means `su -` (PAM service su-l): the target's password alone
    is enough there, though the mode is `required` and the target is enrolled."""
    mfad.restart(services={"su": "off"})
    caller = make_user()
    target = make_user(PASSWORD)
    mfad.enroll(target)

    run = private.run(
        ["su", "-", target, "-c", "echo su-as-$(id -un)"],
        {PASSWORD_PROMPT: [PASSWORD], CODE_PROMPT: []},
        as_user=caller,
    )

    assert run.exit_status == 0, run.output
    assert f"su-as-{target}" in run.output
    assert run.prompts == [PASSWORD_PROMPT]
    [login] = logins_of(mfad, target)
    assert (login["outcome"], login["reason"], login["service"]) == ("skipped", "mode_off", "su-l")

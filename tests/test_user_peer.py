"""PAM programs that run as the user, not root (screen lockers), and the user PAM socket.

They cannot reach the root-only PAM socket. Run with an euid other than 0,
pam_mfa.so connects to `user_socket=` (mfad's ``sockets.pam_user``, 0666)
instead, where mfad takes the peer's uid from SO_PEERCRED and answers only
for the account that uid owns: anyone else is refused before anything about
them is looked at. Codes checked there go through the one verifier and guard
(source ``uid:N``), so they count toward the same account lock as any login.

The program here is tests/pamdriver.c under pam_wrapper, run as a throwaway
user with setpriv (pamtest.authenticate(as_user=...)); pam_unix checks the
password as such programs do, through unix_chkpwd (its own user's only).
"""

from __future__ import annotations

import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from pamtest import authenticate, write_service

PASSWORD = "correct horse battery staple 42"
NOT_OWN = "Only your own account's second factor can be checked here."
ENROL_FIRST = "Run `mfa enroll` in a terminal to set it up, then try again."


def user_socket(mfad: Daemon) -> Path:
    return mfad.pam_socket.with_name("pam-user.sock")


@pytest.fixture
def locker(pam_module: Path, mfad: Daemon) -> Path:
    """The service directory of a screen locker: pam_unix, then pam_mfa.so with both of
    this test's mfad sockets (the root one it must not use, the user one it must)."""
    services = mfad.tmp / "pam.d"
    args = f"socket={mfad.pam_socket} user_socket={user_socket(mfad)}"
    write_service(
        services,
        "locker",
        ["auth required pam_unix.so", f"auth required {pam_module} {args}"],
    )
    write_service(services, "locker-mfa-only", [f"auth required {pam_module} {args}"])
    return services


def logins_of(mfad: Daemon, user: str) -> list[dict[str, object]]:
    return [r for r in mfad.audit() if r.get("event") == "login" and r.get("user") == user]


def wrong_code(secret: str) -> str:
    near = {totp_now(secret, step) for step in range(-3, 4)}
    return next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in near)


def test_user_socket_is_open_to_all_and_owned_by_root(mfad: Daemon) -> None:
    """mfad makes the user PAM socket beside the root one: 0666, owned by root (the module
    trusts no other owner), while the root socket stays 0600."""
    st = user_socket(mfad).stat()
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_IMODE(mfad.pam_socket.stat().st_mode) == 0o600


def test_program_run_as_the_user_authenticates_its_own_user(
    locker: Path, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A screen locker running as alice unlocks for alice's password and current code."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)

    result = authenticate(locker, "locker", user, [PASSWORD, totp_now(secret)], as_user=user)

    assert result.name == "PAM_SUCCESS", result
    [login] = logins_of(mfad, user)
    assert login["outcome"] == "success"
    assert str(login["peer"]).endswith(f",uid={pwd.getpwnam(user).pw_uid}")  # the user's program


def test_program_run_as_a_user_is_refused_for_anyone_else(
    locker: Path, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Run as mallory, the program is refused for alice even with alice's right code: the
    peer's uid must own the name. Nothing of alice's is used: her code stays unused."""
    alice = make_user(PASSWORD)
    mallory = make_user(PASSWORD)
    secret = mfad.enroll(alice)
    code = totp_now(secret)

    result = authenticate(locker, "locker-mfa-only", alice, [code], as_user=mallory)

    assert result.name == "PAM_AUTH_ERR"
    assert result.texts() == [NOT_OWN]  # not even asked for a code
    [login] = logins_of(mfad, alice)
    assert (login["outcome"], login["reason"]) == ("refused", "not_own_account")
    # the same code still logs alice in at her own program: it was never checked
    mine = authenticate(locker, "locker", alice, [PASSWORD, code], as_user=alice)
    assert mine.name == "PAM_SUCCESS", mine


def test_guesses_from_a_users_program_count_toward_the_same_lock(
    locker: Path, mfad: Daemon, make_user: Callable[..., str], pam_login: Callable[..., object]
) -> None:
    """Wrong codes at a screen locker are counted like any login's: with two more over ssh
    the account reaches lockout.deny (5) and is locked for every way in."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    wrong = wrong_code(secret)

    result = authenticate(locker, "locker", user, [PASSWORD, wrong, wrong, wrong], as_user=user)
    assert result.name == "PAM_MAXTRIES"
    assert mfad.request("status", user=user)["failed_attempts"] == 3

    pam_login(user, [wrong, wrong, totp_now(secret)])  # root socket, another source

    status = mfad.request("status", user=user)
    assert status["locked_until"] is not None, status
    locked = authenticate(locker, "locker", user, [PASSWORD, totp_now(secret, 1)], as_user=user)
    assert locked.name == "PAM_AUTH_ERR"
    assert any("The account is locked" in text for text in locked.texts("error")), locked


def test_no_enrolment_at_a_users_program(
    locker: Path, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A user who must enrol is not offered it at a screen locker: no secret is made, they
    are told to run `mfa enroll`."""
    user = make_user(PASSWORD)
    assert mfad.request("require", user=user)["ok"]

    result = authenticate(locker, "locker", user, [PASSWORD], as_user=user)

    assert result.name == "PAM_AUTH_ERR"
    assert any(ENROL_FIRST in text for text in result.texts("error")), result
    assert not any("otpauth://" in text for text in result.texts())
    assert mfad.request("status", user=user)["enrolment_pending"] is False

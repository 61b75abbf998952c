"""What pam_mfa.so itself tells the user, through the real libpam (pam_wrapper).

When it fails closed because mfad cannot be heard, the user reads one fixed
sentence, whatever the application's PAM_SILENT; the reason (socket, errno)
goes only to the administrator's log. With fail=open nothing is said. Under
PAM_SILENT mfad's ERROR text is still shown, its INFO is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from pamtest import SyslogSink, SyslogUnavailable, authenticate, syslog_sink, write_service

UNAVAILABLE = "Two-factor authentication is unavailable; contact your administrator."
INCORRECT = "Incorrect verification code."


@pytest.fixture
def sink() -> Iterator[SyslogSink]:
    """The module's pam_syslog lines, from a /dev/log bound for the test."""
    try:
        with syslog_sink() as collected:
            yield collected
    except SyslogUnavailable as exc:
        pytest.skip(str(exc))


def service(mfad: Daemon, pam_module: Path, *args: str) -> Path:
    services = mfad.tmp / "pam.d"
    write_service(
        services,
        "mfatest",
        [f"auth required {pam_module} socket={mfad.pam_socket} {' '.join(args)}"],
    )
    return services


@pytest.mark.parametrize("silent", [False, True], ids=["plain", "pam-silent"])
def test_daemon_down_the_user_reads_one_plain_sentence(
    mfad: Daemon,
    pam_module: Path,
    make_user: Callable[..., str],
    sink: SyslogSink,
    silent: bool,
) -> None:
    """mfad stopped: the login fails closed and the user is told so in one fixed sentence,
    under PAM_SILENT too; it names no socket or error, which are for the log."""
    user = make_user()
    mfad.enroll(user)
    services = service(mfad, pam_module)
    mfad.stop()

    result = authenticate(services, "mfatest", user, [], silent=silent)

    assert result.name == "PAM_AUTHINFO_UNAVAIL"
    assert result.messages == [("error", UNAVAILABLE)]
    logged = sink.wait_for("mfad unreachable on").text
    assert f"{mfad.pam_socket}: No such file or directory; failing closed" in logged


def test_daemon_down_with_fail_open_says_nothing(
    mfad: Daemon, pam_module: Path, make_user: Callable[..., str]
) -> None:
    """With fail=open the module steps aside (PAM_IGNORE): there is nothing to tell."""
    user = make_user()
    services = service(mfad, pam_module, "fail=open")
    mfad.stop()

    result = authenticate(services, "mfatest", user, [])

    assert result.name != "PAM_AUTHINFO_UNAVAIL"
    assert result.messages == []


def test_under_pam_silent_a_wrong_code_is_still_explained(
    mfad: Daemon, pam_module: Path, make_user: Callable[..., str]
) -> None:
    """PAM_SILENT (sudo's default) hides information, not the reason a code was refused."""
    user = make_user()
    secret = mfad.enroll(user)
    services = service(mfad, pam_module)

    near = {totp_now(secret, step) for step in range(-3, 4)}
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in near)

    result = authenticate(services, "mfatest", user, [wrong, totp_now(secret)], silent=True)

    assert result.name == "PAM_SUCCESS"
    assert result.texts("error") == [INCORRECT]


def test_under_pam_silent_no_press_enter_prompt_for_a_warning_not_shown(
    mfad: Daemon, pam_module: Path, make_user: Callable[..., str]
) -> None:
    """The "Only N recovery codes left." warning is information: under PAM_SILENT mfad
    leaves it out, rather than ask the user to press Enter after a message they never see."""
    mfad.restart(enrolment={"recovery_codes": 3})
    user = make_user()
    begun = mfad.request("enroll_begin", user=user)
    confirmed = mfad.request("enroll_confirm", user=user, code=totp_now(begun["secret"], -1))
    codes = confirmed["recovery_codes"]
    services = service(mfad, pam_module)

    result = authenticate(services, "mfatest", user, [codes[0]], silent=True)

    assert result.name == "PAM_SUCCESS"
    assert result.messages == [("prompt_off", "Verification code: ")]

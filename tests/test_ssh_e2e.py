"""Real SSH logins: OpenSSH's sshd with pam_unix then pam_mfa.so, mfad, and the `ssh` client.

One private sshd serves this module (tests/sshd.py: own port, host key and
PAM service through pam_wrapper; the system's sshd and /etc/pam.d untouched).
Each test points its PAM service at that test's own mfad and logs in as a
throwaway user the way a person would: typing the password, then the code.

What OpenSSH shows the user, found by running it: PAM's error messages
(PAM_ERROR_MSG) are not printed on their own but collected by sshd and sent
as the instruction text of the next keyboard-interactive request, so
"Incorrect verification code." appears just above the next "Verification
code: " prompt. Text pending when PAM fails is sent in an info request
without prompts, whose instruction the client prints only at its default log
level: `ssh -q` hides it. So mfad sends a refusal over sshd with one more
prompt ("Press Enter to continue: ") in front of which it is shown. After the
last wrong code pam_mfa returns PAM_MAXTRIES; sshd then turns
keyboard-interactive and password off for the connection and lists no method
left, which OpenSSH's client takes as "try my own list": with its default
PreferredAuthentications it asks "user@host's password: " up to three times,
for a password sshd refuses unseen (auth-pam.c sshpam_set_maxtries_reached,
sshconnect2.c authmethod_get, OpenSSH 9.2). The shipped sshd drop-in's
`MaxAuthTries 3` ends the connection first: the client's two silent
keyboard-interactive retries use up the tries.

Enrolment at login, also found by running it (OpenSSH 9.2, Debian 12): sshd
gathers PAM's INFO messages and puts them in front of the next prompt's own
text, which the client writes to the terminal byte for byte, so the QR code,
the otpauth URI and the key arrive unaltered just above "Verification code: "
(the client's "(user@host) " prefix lands on the first line, the intro text,
not on the code). INFO that arrives after the last prompt is kept by sshd and
sent after authentication as an SSH banner: the client prints it before the
command's output, a login shell shows it a second time as the login message,
and a quiet client (`ssh -q`, or `LogLevel QUIET`/`ERROR` in ssh_config)
does not print it at all. That is why mfad shows the recovery codes, which
exist in clear only once, in front of one more prompt ("Press Enter once the
recovery codes are saved: "), and the "Only N recovery codes left." warning
in front of "Press Enter to continue: " (tests below, `ssh -q` included).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import Daemon, totp_from_uri, totp_now
from qrimage import decode as decode_terminal_qr
from sshd import (
    CLIENT_PASSWORD_PROMPT,
    CODE_PROMPT,
    CONTINUE_PROMPT,
    PASSWORD_PROMPT,
    SAVED_PROMPT,
    Login,
    PrivateSshd,
)

from mfad.qrtext import render_qr

pytest_plugins = ["sshd"]

pytestmark = pytest.mark.ssh

PASSWORD = "correct horse battery staple 42"
COMMAND = "echo logged-in-as-$(id -un)"
INCORRECT = "Incorrect verification code."
TOO_MANY = "Too many failed attempts with incorrect verification code."
ENROL_INTRO = "Multi-factor authentication is now required for this account."
ENROLLED = "Enrolment complete. Your recovery codes"
# As the daemon lists them: indented, three groups of five of the unambiguous alphabet.
_GROUP = "[2-9A-HJKMNP-TV-Z]{5}"
RECOVERY_CODE = re.compile(rf"^  ({_GROUP}-{_GROUP}-{_GROUP})$", re.M)


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

    login = mfa_sshd.login(user, PASSWORD, [lambda _screen: totp_now(secret)], COMMAND)

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
    # the last message comes with one more prompt, so that `ssh -q` shows it too
    assert login.prompts == [
        PASSWORD_PROMPT,
        CODE_PROMPT,
        CODE_PROMPT,
        CODE_PROMPT,
        CONTINUE_PROMPT,
    ]
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
    """A code that just logged someone in is refused when typed again (RFC 6238 §5.2), and
    the user is told it was already used, over a real SSH login."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    typed: list[str] = []

    def current_code(_screen: str) -> str:
        typed.append(totp_now(secret))
        return typed[-1]

    first = mfa_sshd.login(user, PASSWORD, [current_code], COMMAND)
    assert first.exit_status == 0, first.output
    assert logged_in(user) in first.output

    again = mfa_sshd.login(user, PASSWORD, [typed[0]], COMMAND)

    assert logged_in(user) not in again.output
    assert "That code was already used. Wait for the next code and enter it." in again.output
    assert INCORRECT not in again.output
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


UNAVAILABLE = "Two-factor authentication is unavailable; contact your administrator."
SHIPPED_DROP_IN = Path(__file__).resolve().parent.parent / "etc/ssh/sshd_config.d/pam-mfa.conf"


def test_daemon_down_tells_the_user_over_ssh(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """With mfad stopped, the user who typed the right password reads why they are refused:
    one plain sentence from the module, not a bare password prompt again."""
    user = make_user(PASSWORD)
    mfad.enroll(user)
    mfad.stop()

    login = mfa_sshd.login(user, PASSWORD, [], COMMAND)

    assert login.exit_status == 255
    assert logged_in(user) not in login.output
    assert UNAVAILABLE in login.output
    assert "pam.sock" not in login.output  # the reason is for the administrator's log


@pytest.fixture(scope="module")
def shipped_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSshd]:
    """An sshd that also reads the shipped drop-in (etc/ssh/sshd_config.d/pam-mfa.conf):
    its settings that the test config does not set itself (MaxAuthTries) take effect."""
    server = PrivateSshd(tmp_path_factory.mktemp("sshd-shipped"))
    server.config.write_text(server.config.read_text() + f"Include {SHIPPED_DROP_IN}\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("quiet", [False, True], ids=["plain", "ssh-q"])
def test_third_wrong_code_ends_the_login_with_its_message_and_no_password_prompt(
    shipped_sshd: PrivateSshd,
    pam_module: Path,
    mfad: Daemon,
    make_user: Callable[..., str],
    quiet: bool,
) -> None:
    """With the client's default methods (password among them) and the shipped sshd
    drop-in, the third wrong code shows "Too many failed attempts", with `ssh -q` too, and
    the connection ends: the client never asks for a password that could not succeed."""
    shipped_sshd.set_pam(
        ["auth required pam_unix.so", f"auth required {pam_module} socket={mfad.pam_socket}"]
    )
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    codes = [wrong_code(secret) for _ in range(3)]

    login = shipped_sshd.login(
        user, PASSWORD, codes, COMMAND, client_defaults=True, ssh_options=["-q"] if quiet else []
    )

    assert TOO_MANY in login.output, login.output
    assert CLIENT_PASSWORD_PROMPT not in login.prompts, login.output
    assert login.count(PASSWORD_PROMPT) == 1, login.output
    assert not login.stopped and login.exit_status == 255
    assert logged_in(user) not in login.output


class Phone:
    """An authenticator app: scans the QR code off the terminal, then shows codes."""

    def __init__(self) -> None:
        self.uri = ""

    def scan(self, screen: str) -> str:
        """Read the QR code from what the terminal shows, as a camera would; type its code."""
        self.uri = decode_terminal_qr(screen)
        return self.code()

    def code(self, steps_ahead: int = 0) -> str:
        otp = totp_from_uri(self.uri)
        return str(otp.at(time.time() + steps_ahead * otp.interval))


def enrol_over_ssh(sshd: PrivateSshd, mfad: Daemon, user: str) -> tuple[Phone, Login]:
    """A `pending` user's first ssh login: scan the code shown, type the app's code."""
    phone = Phone()
    login = sshd.login(user, PASSWORD, [phone.scan], COMMAND)
    assert login.exit_status == 0, login.output + sshd.logs()
    return phone, login


def test_pending_user_enrols_at_ssh_login(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A user an administrator requires MFA of logs in over ssh with the password, sees a QR
    code that decodes (from a picture of the terminal) to the otpauth URI shown beside it,
    types the code the app then shows, is shown ten recovery codes, and the command runs.

    The QR code reaches the terminal exactly as mfad drew it: no character stripped,
    changed or wrapped by sshd or the client."""
    user = make_user(PASSWORD)
    assert mfad.request("require", user=user)["changed"] == [
        {"user": user, "from": "none", "to": "pending"}
    ]

    phone, login = enrol_over_ssh(mfa_sshd, mfad, user)

    assert logged_in(user) in login.output
    assert login.prompts == [PASSWORD_PROMPT, CODE_PROMPT, SAVED_PROMPT]
    before, _, after = login.output.partition(CODE_PROMPT)
    assert ENROL_INTRO in before
    assert render_qr(phone.uri) in before, "the QR code on the terminal is not mfad's drawing"
    assert phone.uri in before  # the same URI as text, for a phone that cannot scan
    secret = parse_qs(urlparse(phone.uri).query)["secret"][0]
    key = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    assert f"Key: {key}" in before
    otp = totp_from_uri(phone.uri)
    assert (otp.name, otp.issuer, otp.digits, otp.interval) == (user, "pam-mfa-test", 6, 30)
    shown, _, session = after.partition(SAVED_PROMPT)
    assert ENROLLED in shown
    codes = RECOVERY_CODE.findall(shown)
    assert len(codes) == 10 and len(set(codes)) == 10, after
    # Shown once, with the last prompt, before the session starts.
    assert not set(codes) & set(RECOVERY_CODE.findall(session))
    assert logged_in(user) in session
    status = mfad.request("status", user=user)
    assert (status["state"], status["recovery_codes_left"]) == ("active", 10)
    events = [r["event"] for r in mfad.audit() if r.get("user") == user]
    assert events.index("enrolment_started") < events.index("enrolment_confirmed")
    [record] = audit_for(mfad, user, "login")
    assert (record["outcome"], record["reason"], record["method"]) == (
        "success",
        "enrolled",
        "enrolment",
    )


def test_after_ssh_enrolment_a_code_and_a_recovery_code_log_in(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """After enrolling at an ssh login, the user logs in again with the app's code (no QR code
    this time) and, separately, with one of the recovery codes shown at enrolment; that
    recovery code then fails every time it is typed again, and no shell is given."""
    user = make_user(PASSWORD)
    mfad.request("require", user=user)
    phone, enrolled = enrol_over_ssh(mfa_sshd, mfad, user)
    codes = RECOVERY_CODE.findall(enrolled.output)

    # The next step's code: the step just used to confirm can never log in again.
    with_code = mfa_sshd.login(user, PASSWORD, [lambda _screen: phone.code(+1)], COMMAND)

    assert with_code.exit_status == 0, with_code.output
    assert logged_in(user) in with_code.output
    assert "otpauth://" not in with_code.output and ENROL_INTRO not in with_code.output

    with_recovery = mfa_sshd.login(user, PASSWORD, [codes[0]], COMMAND)

    assert with_recovery.exit_status == 0, with_recovery.output
    assert logged_in(user) in with_recovery.output
    assert mfad.request("status", user=user)["recovery_codes_left"] == 9

    spent_again = mfa_sshd.login(user, PASSWORD, [codes[0]] * 3, COMMAND)

    assert spent_again.exit_status == 255
    assert logged_in(user) not in spent_again.output
    assert spent_again.output.count(INCORRECT) == 2
    assert TOO_MANY in spent_again.output
    logins = audit_for(mfad, user, "login")
    assert [(r["outcome"], r.get("method")) for r in logins] == [
        ("success", "enrolment"),
        ("success", "totp"),
        ("success", "recovery"),
        ("failure", None),
    ]
    assert [r["remaining"] for r in audit_for(mfad, user, "recovery_code_used")] == [9]
    reasons = [r["reason"] for r in audit_for(mfad, user, "attempt")]
    assert reasons == ["incorrect_recovery_code"] * 3
    history = mfad.request("show", user=user)["history"]
    assert [h["method"] for h in history][:2] == ["recovery", "totp"]


def test_recovery_codes_are_shown_before_an_interactive_shell(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Enrolling at a plain `ssh host` login (a shell on a pseudo-terminal, as most people log
    in): the recovery codes are on the screen, once, before the shell's first prompt."""
    user = make_user(PASSWORD)
    mfad.request("require", user=user)
    phone = Phone()

    login = mfa_sshd.login(user, PASSWORD, [phone.scan], COMMAND, interactive=True)

    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert logged_in(user) in login.output
    after = login.output.partition(CODE_PROMPT)[2]
    codes = RECOVERY_CODE.findall(after.partition(SAVED_PROMPT)[0])
    assert len(set(codes)) == 10, after
    assert RECOVERY_CODE.findall(after) == codes
    assert mfad.request("status", user=user)["state"] == "active"


def test_recovery_codes_are_shown_to_a_quiet_ssh_client(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """With `ssh -q`, enrolment at login still shows the recovery codes before the command
    runs: they are shown only once, so a user must never be enrolled without seeing them."""
    user = make_user(PASSWORD)
    mfad.request("require", user=user)
    phone = Phone()

    login = mfa_sshd.login(user, PASSWORD, [phone.scan], COMMAND, ssh_options=["-q"])

    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert mfad.request("status", user=user)["state"] == "active"
    assert logged_in(user) in login.output
    shown = login.output.partition(CODE_PROMPT)[2].partition(SAVED_PROMPT)[0]
    assert len(RECOVERY_CODE.findall(shown)) == 10, login.output


@pytest.mark.parametrize(
    "ssh_options",
    [
        pytest.param([], id="ssh"),
        pytest.param(
            ["-q"],
            id="ssh -q",
        ),
    ],
)
def test_few_recovery_codes_left_warning_is_seen_over_ssh(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: Callable[..., str], ssh_options: list[str]
) -> None:
    """Logging in with a recovery code when two or fewer are left tells the user how many
    remain and how to make new ones, before the command runs."""
    mfad.restart(enrolment={"recovery_codes": 3})
    user = make_user(PASSWORD)
    mfad.request("require", user=user)
    _, enrolled = enrol_over_ssh(mfa_sshd, mfad, user)
    codes = RECOVERY_CODE.findall(enrolled.output)
    assert len(codes) == 3

    login = mfa_sshd.login(user, PASSWORD, [codes[0]], COMMAND, ssh_options=ssh_options)

    assert login.exit_status == 0, login.output
    warning = "Only 2 recovery codes left."
    assert warning in login.output, login.output
    assert login.output.index(warning) < login.output.index(logged_in(user))

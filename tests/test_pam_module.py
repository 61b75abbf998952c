"""pam_mfa.so through the real libpam (pam_wrapper), against scripted and real daemons.

Each test writes its own PAM service file; `authenticate()` runs one
pam_authenticate in a child process and returns what libpam returned and
what the user saw. The module's own return code is read through a probe
stack (PROBE) because libpam never returns PAM_IGNORE itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, totp_now
from pamtest import (
    LOG_AUTHPRIV,
    PamResult,
    SyslogSink,
    SyslogUnavailable,
    authenticate,
    build_c,
    write_service,
)
from pamtest import syslog_sink as _syslog_sink
from peers import (
    PROMPT,
    TIMEOUT_MESSAGE,
    Handler,
    NonRootPeer,
    after_answer,
    bad_result,
    close_mid_frame,
    conversation,
    full_backlog,
    never_answers,
    outcome_peer,
    oversize,
    prompt_timeout,
    send_then_hold,
    serve,
    trickle,
    unknown_type,
)

MODULE_DIR = Path(__file__).resolve().parent.parent / "pam_module"
FREECHECK_SOURCE = Path(__file__).with_name("freecheck.c")
LIBASAN = "/usr/lib/x86_64-linux-gnu/libasan.so.8"
TIMEOUT = 2  # module argument timeout= for the misbehaving peers
SLACK = 3.0  # seconds a loaded machine may add to starting the PAM child
AT_ONCE = "timeout=30"  # for paths that must not wait: any wait would show
CODE = "123456"
IGNORED = "pam_mfa returned PAM_IGNORE"
MAXTRIES_MESSAGE = "Too many failed attempts with incorrect verification code."
# what the module itself says when it fails closed because mfad cannot be heard
UNAVAILABLE = "Two-factor authentication is unavailable; contact your administrator."

# The probe stack: success and every failure end the stack with the module's
# own code ("done"/"die"); only PAM_IGNORE reaches pam_echo, which prints the
# marker; pam_deny makes sure that path can never look like a success.
PROBE = [
    "auth [success=done ignore=ignore default=die] {module} {args}",
    f"auth optional pam_echo.so {IGNORED}",
    "auth required pam_deny.so",
]
# The fail-closed matrix: the password step already said yes, so a module that
# wrongly returned PAM_IGNORE would let the login through.
AFTER_PASSWORD = ["auth required pam_permit.so", "auth required {module} {args}"]


def module_code(result: PamResult) -> str:
    """The module's return code as seen through PROBE."""
    if IGNORED in result.texts("info"):
        assert result.messages[-1] == ("info", IGNORED)
        return "PAM_IGNORE"
    return result.name


class Setup:
    """A short-pathed temporary directory (sun_path holds 108 bytes) with the
    socket path, the service directory and the module under test."""

    def __init__(self, module: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mfa-pam-"))
        self.sock = self.dir / "pam.sock"
        self.services = self.dir / "services"
        self.module = module

    def service(self, *args: str, lines: list[str] = PROBE, name: str = "mfatest") -> str:
        argv = " ".join([f"socket={self.sock}", f"timeout={TIMEOUT}", *args])
        write_service(
            self.services, name, [line.format(module=self.module, args=argv) for line in lines]
        )
        return name

    def login(self, answers: list[str] | None = None, **kw: Any) -> PamResult:
        return authenticate(
            self.services, "mfatest", "alice", [CODE] if answers is None else answers, **kw
        )


@pytest.fixture
def setup(pam_module: Path) -> Iterator[Setup]:
    s = Setup(pam_module)
    yield s
    shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture
def sink() -> Iterator[SyslogSink]:
    try:
        with _syslog_sink() as collected:
            yield collected
    except SyslogUnavailable as exc:
        pytest.skip(str(exc))


def refused_log(sink: SyslogSink, reason: str) -> None:
    """The module logged "unreachable" with this reason, at LOG_ERR, to authpriv."""
    record = sink.wait_for(reason)
    assert "pam_mfa(mfatest:auth)" in record.text
    assert "mfad unreachable" in record.text
    assert (record.facility, record.severity) == (LOG_AUTHPRIV, 3)


# --------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("S", "PAM_SUCCESS"),
        ("F", "PAM_AUTH_ERR"),
        ("M", "PAM_MAXTRIES"),
        ("K", "PAM_IGNORE"),
        ("U", "PAM_AUTHINFO_UNAVAIL"),
    ],
)
def test_each_daemon_outcome_maps_to_its_documented_pam_code(
    setup: Setup, outcome: str, expected: str
) -> None:
    """A login with one answer: the daemon's prompt, INFO and ERROR reach the user in
    order, the code typed reaches the daemon, and the RESULT byte becomes the PAM
    code of docs/protocol.md's table."""
    setup.service()
    with serve(setup.sock, outcome_peer(outcome, CODE)) as peer:
        result = setup.login()
    assert module_code(result) == expected
    assert result.messages[:3] == [
        ("prompt_off", PROMPT),
        ("info", "checked by the scripted peer"),
        ("error", "and an error line"),
    ]
    assert peer.answers == [CODE]
    assert peer.errors == []
    assert peer.starts == [
        {
            "v": "1",
            "user": "alice",
            "service": "mfatest",
            "rhost": "",
            "ruser": "",
            "tty": "",
            "silent": "0",
        }
    ]


def test_start_frame_carries_the_pam_items(setup: Setup) -> None:
    """rhost, ruser and tty set by the application reach the daemon in START."""
    setup.service()
    with serve(setup.sock, outcome_peer("S", CODE)) as peer:
        result = setup.login(rhost="192.0.2.7", ruser="bob", tty="ssh")
    assert result.name == "PAM_SUCCESS"
    assert peer.starts == [
        {
            "v": "1",
            "user": "alice",
            "service": "mfatest",
            "rhost": "192.0.2.7",
            "ruser": "bob",
            "tty": "ssh",
            "silent": "0",
        }
    ]


def test_several_prompts_are_answered_in_order_with_their_echo_mode(setup: Setup) -> None:
    """An echo-on prompt and an echo-off prompt each get their own answer."""
    setup.service()
    steps = [("p", "Token name: "), ("P", "Code: ")]
    with serve(setup.sock, conversation(steps, expect=["phone", CODE])) as peer:
        result = setup.login(["phone", CODE])
    assert result.name == "PAM_SUCCESS"
    assert result.messages == [("prompt_on", "Token name: "), ("prompt_off", "Code: ")]
    assert peer.answers == ["phone", CODE] and peer.errors == []


def test_pam_silent_hides_info_but_still_shows_errors_and_prompts(setup: Setup) -> None:
    """With PAM_SILENT (sudo's default) the user is asked for the code and still reads the
    daemon's ERROR text (why a code was refused), but no INFO; START tells mfad silent=1."""
    setup.service()
    with serve(setup.sock, outcome_peer("F", CODE)) as peer:
        result = setup.login(silent=True)
    assert result.name == "PAM_AUTH_ERR"
    assert result.messages == [("prompt_off", PROMPT), ("error", "and an error line")]
    assert [start["silent"] for start in peer.starts] == ["1"]


def test_text_with_an_embedded_nul_is_shown_up_to_the_nul(setup: Setup) -> None:
    """The module copies daemon text into its own NUL-terminated buffer; a NUL
    inside the payload ends the text instead of confusing the module."""
    setup.service()
    with serve(setup.sock, conversation([("I", "before\0after"), ("E", "")], outcome="F")):
        result = setup.login()
    assert result.name == "PAM_AUTH_ERR"
    assert result.messages == [("info", "before"), ("error", "")]


# ------------------------------------------------------------ unreachable


def test_daemon_down_fails_closed_and_says_why(setup: Setup, sink: SyslogSink) -> None:
    """No socket: PAM_AUTHINFO_UNAVAIL, logged at LOG_ERR to authpriv with the path; the
    user reads one fixed sentence, not the reason."""
    setup.service()
    result = setup.login()
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.messages == [("error", UNAVAILABLE)]
    refused_log(sink, "No such file or directory; failing closed")


def test_daemon_down_with_fail_open_is_ignored_and_logged(setup: Setup, sink: SyslogSink) -> None:
    """fail=open turns "unreachable" into PAM_IGNORE, and still logs it."""
    setup.service("fail=open")
    assert module_code(setup.login()) == "PAM_IGNORE"
    refused_log(sink, "fail=open, ignoring this module")


def test_stale_socket_of_a_dead_daemon_is_unreachable(setup: Setup, sink: SyslogSink) -> None:
    """A socket file nobody listens on (daemon killed) is refused at once."""
    setup.service(AT_ONCE)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(setup.sock))
    leftover.close()
    result = setup.login()
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.elapsed < SLACK
    refused_log(sink, "Connection refused")


def test_daemon_that_stopped_accepting_is_unreachable_within_the_timeout(
    setup: Setup, sink: SyslogSink
) -> None:
    """A daemon whose listen backlog is full: connect() does not hang the login,
    the module retries until timeout=2 and then fails closed."""
    setup.service()
    with full_backlog(setup.sock):
        result = setup.login()
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert TIMEOUT <= result.elapsed < TIMEOUT + SLACK
    refused_log(sink, f"mfad did not accept the connection within {TIMEOUT * 1000} ms")


@pytest.mark.parametrize(
    ("bind_as_root", "reason"),
    [(False, "is owned by uid 65534, not root"), (True, "runs as uid 65534, not root")],
    ids=["socket-owned-by-nobody", "peer-runs-as-nobody"],
)
def test_daemon_not_running_as_root_is_refused(
    pam_module: Path, sink: SyslogSink, bind_as_root: bool, reason: str
) -> None:
    """A peer run by `nobody` that would say SUCCESS is never believed: a socket
    file not owned by root is refused before connecting, and a root-owned file
    whose listener is not root is refused by SO_PEERCRED."""
    with NonRootPeer(bind_as_root=bind_as_root) as peer:
        setup = Setup(pam_module)
        setup.sock = peer.path
        try:
            setup.service()
            result = setup.login()
        finally:
            shutil.rmtree(setup.dir, ignore_errors=True)
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    refused_log(sink, reason)


def _regular_file(path: Path) -> None:
    path.write_text("not a socket\n")


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


@pytest.mark.parametrize(
    "make", [_regular_file, _fifo, None], ids=["regular-file", "fifo", "symlink-to-socket"]
)
def test_something_other_than_a_socket_at_the_path_is_refused(
    setup: Setup, sink: SyslogSink, make: Callable[[Path], None] | None
) -> None:
    """A regular file, a FIFO, or a symlink (even to a live, correct root peer)
    at the socket path: refused without hanging, "not a socket"."""
    setup.service(AT_ONCE)
    if make is not None:
        make(setup.sock)
        result = setup.login()
    else:
        real = setup.dir / "real.sock"
        with serve(real, outcome_peer("S", CODE)) as peer:
            setup.sock.symlink_to(real)
            result = setup.login()
        assert peer.connections == 0
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.elapsed < SLACK
    refused_log(sink, "is not a socket")


BROKEN_PEERS: list[tuple[str, Callable[[], Handler], str, bool]] = [
    # id, peer, logged reason, slow (needs the timeout to notice)
    ("never-answers", never_answers, f"timed out after {TIMEOUT * 1000} ms", True),
    ("one-byte-a-second", trickle, f"timed out after {TIMEOUT * 1000} ms", True),
    ("eof-mid-frame", close_mid_frame, "closed the connection before RESULT", False),
    ("oversize-frame", oversize, "frame length 70000 outside 1..65536", False),
    ("zero-length-frame", lambda: send_then_hold(b"\0\0\0\0"), "frame length 0", False),
    ("unknown-type", unknown_type, "unknown frame type 0x5a", False),
    ("answer-type-from-daemon", lambda: send_then_hold(b"\0\0\0\x01A"), "type 0x41", False),
    ("bad-result-byte", bad_result, "unknown RESULT outcome 0x58", False),
    ("long-result", lambda: bad_result(b"SS"), "RESULT payload of 2 bytes", False),
    ("empty-result", lambda: bad_result(b""), "RESULT payload of 0 bytes", False),
    ("eof-before-result", lambda: send_then_hold(b"", close=True), "before RESULT", False),
]


@pytest.mark.parametrize(
    ("make_peer", "reason", "slow"),
    [case[1:] for case in BROKEN_PEERS],
    ids=[case[0] for case in BROKEN_PEERS],
)
def test_misbehaving_daemon_is_unreachable_within_the_timeout(
    setup: Setup, sink: SyslogSink, make_peer: Callable[[], Handler], reason: str, slow: bool
) -> None:
    """Silence, a 1 byte/s trickle, EOF mid-frame, oversize, zero-length and
    unknown frames, a bad RESULT: PAM_AUTHINFO_UNAVAIL within timeout=2 (the
    trickle cannot stretch it: the timeout covers a whole frame), the login
    process returns normally, and the log names the reason."""
    setup.service()
    with serve(setup.sock, make_peer()):
        result = setup.login()
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.elapsed < TIMEOUT + SLACK
    if slow:
        assert result.elapsed >= TIMEOUT
    refused_log(sink, reason)


@pytest.mark.parametrize(
    "make_peer", [never_answers, oversize, unknown_type], ids=lambda f: f.__name__
)
def test_misbehaving_daemon_with_fail_open_is_ignored(
    setup: Setup, make_peer: Callable[[], Handler]
) -> None:
    """With fail=open a broken first reply is "unreachable" too, hence PAM_IGNORE."""
    setup.service("fail=open")
    with serve(setup.sock, make_peer()):
        assert module_code(setup.login()) == "PAM_IGNORE"


@pytest.mark.parametrize(
    ("make_peer", "reason"),
    [
        (after_answer, f"timed out after {TIMEOUT * 1000} ms"),
        (lambda: after_answer(b"\x00\x01\x11\x70I"), "frame length 70000"),
        (lambda: after_answer(close=True), "closed the connection before RESULT"),
    ],
    ids=["silent", "oversize", "eof"],
)
def test_break_after_the_conversation_began_fails_closed_even_with_fail_open(
    setup: Setup, sink: SyslogSink, make_peer: Callable[[], Handler], reason: str
) -> None:
    """fail=open answers "is mfad there?". Once mfad has prompted, a timeout, a
    bad frame or EOF is PAM_AUTHINFO_UNAVAIL whatever the mode: a user can
    provoke such a break (a back-off longer than timeout=) and must not turn it
    into PAM_IGNORE, i.e. a login on the password alone."""
    setup.service("fail=open")
    with serve(setup.sock, make_peer()) as peer:
        result = setup.login()
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert peer.answers == [CODE]
    record = sink.wait_for("mfad broke off the conversation")
    assert reason in record.text and "failing closed despite fail=open" in record.text


# ----------------------------------------------- the user's side, not the daemon's


def test_prompt_timeout_while_the_user_types_shows_the_daemons_message(setup: Setup) -> None:
    """The daemon gives up on the prompt and closes while the module is still in
    the conversation: the ANSWER write fails, the module still reads the ERROR
    and RESULT already sent, so the user sees why and gets PAM_AUTH_ERR, not
    "unreachable" (which fail=open would have turned into PAM_IGNORE)."""
    setup.service("fail=open")
    with serve(setup.sock, prompt_timeout(after=0.2)):
        result = setup.login(answer_delay=0.8)
    assert module_code(result) == "PAM_AUTH_ERR"
    assert result.messages == [("prompt_off", PROMPT), ("error", TIMEOUT_MESSAGE)]


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_conversation_failure_is_a_conversation_error_in_both_fail_modes(
    setup: Setup, fail: str
) -> None:
    """The user's client cannot answer (here: no answer left): PAM_CONV_ERR,
    never the fail mode, so fail=open cannot be triggered from the keyboard."""
    setup.service(f"fail={fail}")
    with serve(setup.sock, outcome_peer("S", CODE)):
        result = setup.login([])
    assert module_code(result) == "PAM_CONV_ERR"


@pytest.mark.parametrize(
    "answer", ["9" * 70000, "12\udcff34"], ids=["longer-than-a-frame", "not-utf8"]
)
def test_unsendable_answer_fails_closed_even_with_fail_open(
    setup: Setup, sink: SyslogSink, answer: str
) -> None:
    """An answer that cannot be sent (over 64 KiB, or bytes that are not UTF-8,
    which mfad would drop the connection for) is PAM_AUTH_ERR, not "unreachable":
    a user must not be able to reach fail=open by typing."""
    setup.service("fail=open")
    with serve(setup.sock, outcome_peer("S", CODE)) as peer:
        result = setup.login([answer])
    assert module_code(result) == "PAM_AUTH_ERR"
    assert peer.answers == []
    sink.wait_for("answer is too long or not UTF-8")


def test_overlong_user_name_fails_closed_without_asking_the_daemon(
    setup: Setup, sink: SyslogSink
) -> None:
    """A 257-byte user name is refused before any connection (PAM_AUTH_ERR even
    with fail=open): the protocol caps user names at 256 bytes."""
    setup.service("fail=open")
    with serve(setup.sock, outcome_peer("S", CODE)) as peer:
        result = authenticate(setup.services, "mfatest", "u" * 257, [CODE])
    assert module_code(result) == "PAM_AUTH_ERR"
    assert peer.connections == 0
    sink.wait_for("PAM item user is longer than 256 bytes or not UTF-8")


def test_overlong_rhost_fails_closed(setup: Setup) -> None:
    """PAM item values are capped at 1024 bytes; a longer rhost fails closed."""
    setup.service("fail=open")
    with serve(setup.sock, outcome_peer("S", CODE)) as peer:
        result = setup.login(rhost="h" * 1025)
    assert module_code(result) == "PAM_AUTH_ERR"
    assert peer.connections == 0


# ------------------------------------------------------------- arguments


def test_unknown_and_malformed_arguments_are_logged_and_defaults_kept(
    setup: Setup, sink: SyslogSink
) -> None:
    """`bogus`, `timeout=soon`, `timeout=0` and `fail=maybe` are each logged as
    errors; the module keeps its defaults (10 s, fail closed) and still works."""
    setup.service("bogus", "timeout=soon", "timeout=0", "fail=maybe", "debug")
    with serve(setup.sock, outcome_peer("S", CODE)):
        assert setup.login().name == "PAM_SUCCESS"
    for line in (
        "unknown option: bogus",
        "bad timeout=soon (1..3600 seconds), using 10",
        "bad timeout=0 (1..3600 seconds), using 10",
        "unknown option: fail=maybe",
    ):
        record = sink.wait_for(line)
        assert (record.facility, record.severity) == (LOG_AUTHPRIV, 3)
    assert sink.wait_for("mfad says 'S' for alice").severity == 7  # debug, LOG_DEBUG
    assert not [r for r in sink.lines(CODE)], "the code typed must never be logged"


# ------------------------------------------------------ fail-closed matrix


MATRIX: list[tuple[str, Callable[[], Handler] | None, str, str]] = [
    # id, peer (None: no daemon), fail mode, result after a successful password
    ("failure", lambda: outcome_peer("F", CODE), "closed", "PAM_AUTH_ERR"),
    ("maxtries", lambda: outcome_peer("M", CODE), "closed", "PAM_MAXTRIES"),
    ("unavail", lambda: outcome_peer("U", CODE), "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("unavail-open", lambda: outcome_peer("U", CODE), "open", "PAM_AUTHINFO_UNAVAIL"),
    ("failure-open", lambda: outcome_peer("F", CODE), "open", "PAM_AUTH_ERR"),
    ("down", None, "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("oversize", oversize, "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("unknown-type", unknown_type, "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("bad-result", bad_result, "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("eof-mid-frame", close_mid_frame, "closed", "PAM_AUTHINFO_UNAVAIL"),
    ("silent-after-answer-open", after_answer, "open", "PAM_AUTHINFO_UNAVAIL"),
    # Documented passes: a skip, and an unreachable daemon under fail=open.
    ("skip", lambda: outcome_peer("K", CODE), "closed", "PAM_SUCCESS"),
    ("down-open", None, "open", "PAM_SUCCESS"),
]


@pytest.mark.parametrize(
    ("make_peer", "fail", "expected"),
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_after_a_good_password_only_success_or_skip_lets_the_user_in(
    setup: Setup, make_peer: Callable[[], Handler] | None, fail: str, expected: str
) -> None:
    """pam_permit stands for a correct password before pam_mfa: every failure
    and every fail-closed "unreachable" still refuses the login; only a skip
    and fail=open with the daemon unreachable let it through."""
    setup.service(f"fail={fail}", lines=AFTER_PASSWORD)
    if make_peer is None:
        result = setup.login()
    else:
        with serve(setup.sock, make_peer()):
            result = setup.login()
    assert result.name == expected


def test_a_skip_never_satisfies_a_sufficient_line(setup: Setup) -> None:
    """`auth sufficient pam_mfa.so` then pam_deny: a skip (PAM_IGNORE) does not
    end the stack with success, so no one gets in on a skip alone."""
    setup.service(lines=["auth sufficient {module} {args}", "auth required pam_deny.so"])
    with serve(setup.sock, outcome_peer("K", CODE)):
        assert setup.login().name == "PAM_AUTH_ERR"
    with serve(setup.sock, outcome_peer("S", CODE)):
        assert setup.login().name == "PAM_SUCCESS"


# ------------------------------------------------------------ real daemon


def _wrong_code(secret: str) -> str:
    """A six-digit code that no step in the acceptance window (±1, wide margin) takes."""
    valid = {totp_now(secret, offset) for offset in range(-3, 4)}
    return next(c for c in (f"{n:06d}" for n in range(100000, 1000000, 7919)) if c not in valid)


def _real(setup: Setup, mfad: Daemon, *args: str, lines: list[str] = PROBE) -> None:
    setup.sock = mfad.pam_socket
    setup.service(*args, lines=lines)


def test_real_daemon_enrolled_user_with_the_right_code_logs_in(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """libpam, pam_mfa.so and mfad: the current authenticator code
    for an enrolled user gives PAM_SUCCESS, after the daemon's prompt."""
    user = make_user()
    secret = mfad.enroll(user)
    _real(setup, mfad)
    result = authenticate(setup.services, "mfatest", user, [totp_now(secret)])
    assert result.name == "PAM_SUCCESS"
    assert result.messages == [("prompt_off", PROMPT)]


def test_real_daemon_three_wrong_codes_is_maxtries(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Three wrong codes: "Incorrect verification code." twice, then the
    too-many-attempts message, and PAM_MAXTRIES."""
    user = make_user()
    wrong = _wrong_code(mfad.enroll(user))
    _real(setup, mfad)
    result = authenticate(setup.services, "mfatest", user, [wrong] * 3)
    assert result.name == "PAM_MAXTRIES"
    assert result.texts("prompt_off") == [PROMPT] * 3
    assert result.texts("error") == ["Incorrect verification code."] * 2 + [MAXTRIES_MESSAGE]


def test_real_daemon_prompt_timeout_reaches_the_user(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """mfad's prompt timeout (1 s here) passes while the user is typing: the
    user sees the timeout message and the login fails with PAM_AUTH_ERR, even
    under fail=open."""
    user = make_user()
    secret = mfad.enroll(user)
    mfad.restart(login={"prompt_timeout": 1})
    _real(setup, mfad, "fail=open")
    result = authenticate(setup.services, "mfatest", user, [totp_now(secret)], answer_delay=2)
    assert module_code(result) == "PAM_AUTH_ERR"
    assert ("error", TIMEOUT_MESSAGE) in result.messages


def test_real_daemon_back_off_longer_than_the_timeout_is_not_a_bypass(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """mfad delays its answer to a wrong code (back-off, 3 s here) beyond the
    module's timeout=2: under fail=open that must fail closed, or guessing one
    wrong code would log an attacker in on the password alone."""
    user = make_user()
    wrong = _wrong_code(mfad.enroll(user))
    mfad.restart(lockout={"delay": 3, "max_delay": 3})
    _real(setup, mfad, "fail=open")
    result = authenticate(setup.services, "mfatest", user, [wrong] * 3)
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.messages == [("prompt_off", PROMPT), ("error", UNAVAILABLE)]


def test_real_daemon_skip_is_pam_ignore(setup: Setup, mfad: Daemon) -> None:
    """mode: off makes mfad skip everyone; the module returns PAM_IGNORE."""
    mfad.restart(mode="off")
    _real(setup, mfad)
    result = authenticate(setup.services, "mfatest", "alice", [CODE])
    assert module_code(result) == "PAM_IGNORE"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_real_daemon_stopped_is_unreachable(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str], how: str
) -> None:
    """Stopped (socket removed) or killed (socket left behind): the login fails
    with PAM_AUTHINFO_UNAVAIL at once, and fail=open turns it into PAM_IGNORE."""
    user = make_user()
    secret = mfad.enroll(user)
    mfad.stop() if how == "stop" else mfad.kill()
    _real(setup, mfad, AT_ONCE)
    result = authenticate(setup.services, "mfatest", user, [totp_now(secret)])
    assert module_code(result) == "PAM_AUTHINFO_UNAVAIL"
    assert result.elapsed < SLACK
    _real(setup, mfad, "fail=open")
    assert module_code(authenticate(setup.services, "mfatest", user, [CODE])) == "PAM_IGNORE"


# ------------------------------------------------- secrets wiped before free


KEY_LINE = re.compile(r"^Key: ([A-Z2-7 ]+)$", re.M)
ENROLLED = "Enrolment complete"


@pytest.fixture(scope="session")
def freecheck() -> Path:
    """tests/freecheck.c as an LD_PRELOAD library: it searches every block that
    pam_mfa.so frees for the markers in $FREECHECK_MARKERS (see its header)."""
    return build_c(FREECHECK_SOURCE, shared=True, libs=["-ldl"])


def test_real_daemon_enrolment_secrets_are_wiped_before_the_module_frees_them(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str], freecheck: Path, tmp_path: Path
) -> None:
    """Enrolment at login sends the TOTP key and then the recovery codes as INFO
    text. No block that pam_mfa.so frees (its copies of the text, the frame
    buffer) still holds the key or the recovery-codes message, so neither is
    left in the login process's heap for its next malloc or a core dump."""
    user = make_user()  # mode required: a new user is offered enrolment at login
    _real(setup, mfad)
    first = authenticate(setup.services, "mfatest", user, [])  # reads, gives up
    shown = KEY_LINE.search("\n".join(first.texts("info")))
    assert shown is not None, first.messages
    secret = shown.group(1).replace(" ", "")  # the same key is offered again below
    report = tmp_path / "freecheck.txt"
    answers = [totp_now(secret), ""]  # the code, then Enter once the recovery codes are read
    result = authenticate(
        setup.services,
        "mfatest",
        user,
        answers,
        preload_extra=[str(freecheck)],
        env={"FREECHECK_MARKERS": f"{secret}\n{ENROLLED}", "FREECHECK_REPORT": str(report)},
    )
    assert result.name == "PAM_SUCCESS", result
    assert any(text.startswith(ENROLLED) for text in result.texts("info"))
    assert any(secret in text for text in result.texts("info"))
    *hits, count = report.read_text().splitlines()
    assert hits == [], "pam_mfa.so freed daemon text without wiping it"
    assert re.fullmatch(r"checked [1-9]\d* blocks", count), "the free() hook never ran"


# ------------------------------------------------------ valgrind and ASan


VALGRIND_CASES: list[tuple[str, Callable[[], Handler] | None, list[str], str]] = [
    ("success", lambda: outcome_peer("S", CODE), [CODE], "PAM_SUCCESS"),
    ("wrong-code", lambda: outcome_peer("F", "654321"), ["654321"], "PAM_AUTH_ERR"),
    (
        "three-prompts",
        lambda: conversation([("P", PROMPT)] * 3 + [("E", "no")], outcome="M"),
        ["1", "2", "3"],
        "PAM_MAXTRIES",
    ),
    ("daemon-down", None, [CODE], "PAM_AUTHINFO_UNAVAIL"),
    ("oversize", oversize, [CODE], "PAM_AUTHINFO_UNAVAIL"),
    ("eof-mid-frame", close_mid_frame, [CODE], "PAM_AUTHINFO_UNAVAIL"),
    ("unknown-type", unknown_type, [CODE], "PAM_AUTHINFO_UNAVAIL"),
    ("conversation-fails", lambda: outcome_peer("S", CODE), [], "PAM_CONV_ERR"),
    ("long-answer", lambda: outcome_peer("S", CODE), ["9" * 70000], "PAM_AUTH_ERR"),
]


def _run_case(
    setup: Setup, make_peer: Callable[[], Handler] | None, answers: list[str], **kw: Any
) -> PamResult:
    if make_peer is None:
        return setup.login(answers, **kw)
    with serve(setup.sock, make_peer()):
        return setup.login(answers, **kw)


@pytest.mark.valgrind
@pytest.mark.parametrize(
    ("make_peer", "answers", "expected"),
    [case[1:] for case in VALGRIND_CASES],
    ids=[case[0] for case in VALGRIND_CASES],
)
def test_under_valgrind_no_invalid_access_and_no_leak(
    setup: Setup, make_peer: Callable[[], Handler] | None, answers: list[str], expected: str
) -> None:
    """The C driver under memcheck: each path returns its code with no invalid
    read/write and no definitely lost block (authenticate raises otherwise)."""
    setup.service(lines=["auth required {module} {args}"])
    assert _run_case(setup, make_peer, answers, valgrind=True).name == expected


@pytest.mark.valgrind
def test_prompt_timeout_path_under_valgrind(setup: Setup) -> None:
    """The EPIPE-then-keep-reading path is clean under memcheck too."""
    setup.service(lines=["auth required {module} {args}"])
    with serve(setup.sock, prompt_timeout(after=0.3)):
        result = setup.login(valgrind=True, answer_delay=1.5)
    assert result.name == "PAM_AUTH_ERR"
    assert result.texts("error") == [TIMEOUT_MESSAGE]


@pytest.mark.valgrind
def test_real_daemon_login_under_valgrind(
    setup: Setup, mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A real login (right code) and a real refusal (three wrong codes) with
    mfad, under memcheck."""
    user = make_user()
    secret = mfad.enroll(user)
    _real(setup, mfad, lines=["auth required {module} {args}"])
    ok = authenticate(setup.services, "mfatest", user, [totp_now(secret)], valgrind=True)
    assert ok.name == "PAM_SUCCESS"
    wrong = [_wrong_code(secret)] * 3
    refused = authenticate(setup.services, "mfatest", user, wrong, valgrind=True)
    assert refused.name == "PAM_MAXTRIES"


@pytest.fixture(scope="session")
def asan_module() -> Path:
    """pam_mfa_asan.so: the same source with AddressSanitizer and UBSan."""
    if not Path(LIBASAN).exists():
        pytest.skip("libasan is not installed")
    subprocess.run(["make", "-s", "-C", str(MODULE_DIR), "asan"], check=True)
    return MODULE_DIR / "pam_mfa_asan.so"


@pytest.mark.parametrize(
    ("make_peer", "answers", "expected"),
    [case[1:] for case in VALGRIND_CASES],
    ids=[case[0] for case in VALGRIND_CASES],
)
def test_under_address_sanitizer(
    asan_module: Path,
    make_peer: Callable[[], Handler] | None,
    answers: list[str],
    expected: str,
) -> None:
    """The ASan+UBSan build, loaded by libpam under pam_wrapper with libasan
    preloaded first: the same paths give the same codes with no sanitizer
    report and no leak (authenticate raises otherwise)."""
    setup = Setup(asan_module)
    try:
        setup.service(lines=["auth required {module} {args}"])
        result = _run_case(setup, make_peer, answers, preload_extra=[LIBASAN])
    finally:
        shutil.rmtree(setup.dir, ignore_errors=True)
    assert result.name == expected

"""Property-based fuzzing of the daemon's parsers, in-process and on a live daemon.

In-process: the frame decoder, the frame reader, the START parser and the
config parser take arbitrary input and either return a value or raise the one
documented exception (ProtocolError, ConfigError); encoding then reading a
frame gives it back. Live: random bytes and random frame sequences on the PAM
socket and random requests on the control socket; the daemon answers each with
well-formed frames only, never logs anyone in, and afterwards a real login
succeeds, the process is alive and its log holds no traceback.

The example counts keep this file under a minute. For a long run, multiply
every count::

    MFA_FUZZ_SCALE=400 .venv/bin/pytest tests/test_fuzz_daemon.py -q --hypothesis-show-statistics

Done on 2026-11-30 at e3e1b7d (2 cores): 45 min 38 s, 24 passed, 920,512
in-process examples, and up to 280,000 live inputs (60,000 byte strings and
80,000 frame sequences on the PAM socket, 100,000 control requests, 40,000
byte strings on the control socket); no new failure.

Each crash found became a named regression test below (``test_regression_*``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from conftest import Daemon, totp_now
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from wire import PamWire

from mfa_wire.framing import MAX_FRAME, Frame, decode_body, encode, read_frame
from mfad import config
from mfad.errors import ConfigError, ProtocolError
from mfad.protocol import MAX_USER, parse_start

SCALE = float(os.environ.get("MFA_FUZZ_SCALE", "1"))
F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int) -> Callable[[F], F]:
    """Hypothesis settings for this file: scaled example count, no deadline, no database."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,  # no .hypothesis/ directory in the tree; failures print a reproducer
        # one daemon serves all examples of a test on purpose: state accumulates
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _raw_frame(ftype: int, payload: bytes, length: int | None = None) -> bytes:
    body = bytes([ftype]) + payload
    return struct.pack("!I", len(body) if length is None else length) + body


# --- in-process: framing -------------------------------------------------------------------


@fuzz(500)
@given(st.binary(min_size=1, max_size=300))
def test_decode_body_returns_a_frame_or_raises_protocol_error(body: bytes) -> None:
    """Any non-empty body decodes to (type, UTF-8 payload) or is refused as a ProtocolError."""
    try:
        frame = decode_body(body)
    except ProtocolError:
        return
    assert frame.type == chr(body[0])
    assert frame.payload.encode("utf-8") == body[1:]


def test_regression_decode_body_of_an_empty_body_is_a_protocol_error() -> None:
    """An empty body has no type byte: a ProtocolError, not an IndexError.

    read_frame never passes one (it checks the length first), so this only
    guards the function's own contract.
    """
    with pytest.raises(ProtocolError):
        decode_body(b"")


async def _read_all(data: bytes) -> tuple[list[Frame], bool]:
    """Every frame a reader gets from `data` then EOF, and whether it ended in ProtocolError."""
    reader = asyncio.StreamReader(limit=2**17)
    reader.feed_data(data)
    reader.feed_eof()
    frames: list[Frame] = []
    while True:
        try:
            frame = await read_frame(reader)
        except ProtocolError:
            return frames, True
        if frame is None:
            return frames, False
        frames.append(frame)


_headers = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(0, 40),
    st.sampled_from([MAX_FRAME, MAX_FRAME + 1, 2**31]),
).map(lambda n: struct.pack("!I", n))
_streams = st.lists(st.one_of(st.binary(max_size=60), _headers), max_size=8).map(b"".join)


@fuzz(300)
@given(_streams)
def test_read_frame_yields_frames_then_eof_or_protocol_error(data: bytes) -> None:
    """From any byte stream the reader returns whole frames, then a clean EOF or a
    ProtocolError, nothing else; the frames it returns are exactly a prefix of the input."""
    frames, broken = asyncio.run(_read_all(data))
    consumed = b"".join(_raw_frame(ord(f.type), f.payload.encode()) for f in frames)
    assert data.startswith(consumed)
    if not broken:
        assert consumed == data


_frame_types = st.characters(min_codepoint=0, max_codepoint=127)
_payloads = st.text(max_size=200)


@fuzz(300)
@given(st.lists(st.tuples(_frame_types, _payloads), max_size=6))
def test_encode_then_read_frame_gives_the_same_frames(frames: list[tuple[str, str]]) -> None:
    """A sequence of encoded frames reads back as the same types and payloads, then EOF."""
    data = b"".join(encode(t, p) for t, p in frames)
    read, broken = asyncio.run(_read_all(data))
    assert not broken
    assert [(f.type, f.payload) for f in read] == frames


@fuzz(50)
@given(_frame_types, st.integers(MAX_FRAME, MAX_FRAME + 3))
def test_encode_refuses_what_the_reader_would_refuse(ftype: str, size: int) -> None:
    """A frame body over MAX_FRAME bytes is never sent: encode raises ProtocolError."""
    with pytest.raises(ProtocolError):
        encode(ftype, "x" * size)


# --- in-process: START -------------------------------------------------------------------

_start_keys = st.sampled_from(["v", "user", "service", "rhost", "ruser", "tty", "x", ""])
_start_values = st.one_of(
    st.sampled_from(["1", "2", "", "root", "nobody", "a/b", "x" * 300, "x" * 1100]),
    st.text(max_size=40),
)
_start_items = st.lists(
    st.one_of(
        st.tuples(_start_keys, _start_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(max_size=20),
    ),
    max_size=8,
).map(lambda items: "\0".join(items) + "\0")


@fuzz(500)
@given(st.one_of(_start_items, st.text(max_size=200)))
@example("v=1\0user=root\0")
def test_parse_start_accepts_only_a_usable_start(payload: str) -> None:
    """A START payload gives a Start with a usable user name, or a ProtocolError."""
    try:
        start = parse_start(Frame("S", payload))
    except ProtocolError:
        return
    assert start.user and start.user.isprintable() and "/" not in start.user
    assert len(start.user.encode()) <= MAX_USER


@fuzz(200)
@given(st.binary(min_size=1, max_size=200))
def test_parse_start_of_any_decoded_frame(body: bytes) -> None:
    """Whatever bytes arrive as a frame body, decoding then parsing raises ProtocolError at
    worst."""
    with contextlib.suppress(ProtocolError):
        parse_start(decode_body(body))


# --- in-process: config ------------------------------------------------------------------

_scalars = st.sampled_from(
    [
        "1",
        "0",
        "-1",
        "16",
        "1024",
        "65536",
        "3.5",
        "1e3",
        ".inf",
        ".nan",
        "~",
        "null",
        "yes",
        "no",
        "true",
        "off",
        "on",
        "required",
        "optional",
        "SHA1",
        "SHA256",
        "'/abs/path'",
        "rel",
        "''",
        "0x10",
        "0o17",
        "2001-01-01",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        '"\\x00"',
        "&a 5",
        "*a",
        "|\n  block",
        ">-\n  folded",
        "- x",
        "'unterminated",
        "{",
        "]",
        ": x",
    ]
)
_sections = {"totp", "login", "lockout", "sockets", "store", "audit"}
_sub_keys = {
    section: [k.split(".", 1)[1] for k in config._SCHEMA if k.startswith(section + ".")] + ["bogus"]
    for section in _sections
}
_top_keys = [k for k in config._SCHEMA if "." not in k] + sorted(_sections) + ["bogus"]


@st.composite
def _yaml_documents(draw: st.DrawFn, scalars: st.SearchStrategy[str] = _scalars) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.append(f"{draw(st.sampled_from(_top_keys))}: {draw(scalars)}")
        elif kind == 1:
            section = draw(st.sampled_from(sorted(_sections)))
            lines.append(f"{section}:")
            for key in draw(st.lists(st.sampled_from(_sub_keys[section]), max_size=3)):
                lines.append(f"{' ' * draw(st.integers(1, 4))}{key}: {draw(scalars)}")
        elif kind == 2:
            lines.append(draw(st.text(max_size=30)))
        else:
            lines.append(draw(st.sampled_from(["---", "...", "#", "- a", "? x", "&x", "%YAML"])))
    return "\n".join(lines)


@fuzz(300)
@given(st.one_of(_yaml_documents(), st.text(max_size=300)))
def test_config_parse_returns_a_config_or_raises_config_error(text: str) -> None:
    """Any config text gives a Config or a ConfigError that names where it went wrong."""
    try:
        parsed = config.parse(text, "/etc/mfad/mfad.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("/etc/mfad/mfad.yaml")
        return
    assert parsed.mode in config.MODES


_tagged = st.sampled_from(
    [
        "!!python/name:os.system",
        "!foo bar",
        "!!int abc",
        "!!float x",
        "!!timestamp 2001-13-99",
        "!!binary AAAA",
        "!!str 5",
        "!!bool maybe",
        "!!null x",
        "!!set {a}",
    ]
)
_CONFIG_CRASHES = {
    "unknown tag": "mode: !foo bar\n",
    "python tag": "mode: !!python/name:os.system\n",
    "int tag on text": "max_connections: !!int abc\n",
    "impossible date": "login:\n  prompt: !!timestamp 2001-13-99\n",
    "deep nesting": "mode: " + "[" * 5000 + "]" * 5000 + "\n",
}
BOOL_TAG_CRASH = "mode: !!bool maybe\n"  # PyYAML's bool constructor raises KeyError


@fuzz(200)
@given(_yaml_documents(_tagged))
@example(_CONFIG_CRASHES["unknown tag"])
@example(BOOL_TAG_CRASH)
def test_config_with_yaml_tags_raises_only_config_error(text: str) -> None:
    """Explicit YAML tags (!!int, !!timestamp, unknown or python tags) end in ConfigError."""
    with contextlib.suppress(ConfigError):
        config.parse(text, "/etc/mfad/mfad.yaml")


@pytest.mark.parametrize(
    "text",
    [
        *_CONFIG_CRASHES.values(),
        BOOL_TAG_CRASH,
    ],
    ids=[*_CONFIG_CRASHES, "bool tag on a non-bool"],
)
def test_regression_config_oddities_are_config_errors(text: str) -> None:
    """Each config that once escaped as another exception is refused with line and key, so
    `mfad --check-config` and SIGHUP report it instead of dying with a traceback."""
    with pytest.raises(ConfigError, match=r"mfad\.yaml"):
        config.parse(text, "/etc/mfad/mfad.yaml")


# --- live daemon ---------------------------------------------------------------------------

LOGIN_USER = "root"  # seeded (mfad resolves names: it must exist); root is never locked
_users = st.one_of(
    st.sampled_from(["root", "nobody", "fuzz-ghost", "", "a/b"]), st.text(max_size=12)
)
_answers = st.one_of(st.from_regex(r"[0-9]{6}", fullmatch=True), st.text(max_size=12))
_pam_start = st.tuples(st.sampled_from(["1", "1", "1", "2"]), _users, _start_items).map(
    lambda t: f"v={t[0]}\0user={t[1]}\0{t[2]}"
)
_pam_frames = st.lists(
    st.one_of(
        st.tuples(st.just(ord("S")), _pam_start.map(str.encode)),
        st.tuples(st.just(ord("A")), _answers.map(str.encode)),
        st.tuples(st.integers(0, 255), st.binary(max_size=40)),
    ),
    max_size=6,
)


def _exchange(path: Path, data: bytes) -> tuple[bytes, bool]:
    """Send `data`, half-close, and collect the reply until the daemon closes (or resets)."""
    with PamWire(path, timeout=10) as wire:
        try:
            wire.send_raw(data)
            wire.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon already dropped us: still read what it sent before
        reply = bytearray()
        while True:
            try:
                chunk = wire.sock.recv(65536)
            except ConnectionResetError:
                return bytes(reply), True
            if not chunk:
                return bytes(reply), False
            reply += chunk


def _check_pam_reply(reply: bytes, reset: bool) -> None:
    """Only daemon->module frames, each well formed; at most one RESULT, last, never S."""
    frames, broken = asyncio.run(_read_all(reply))
    assert not broken or reset, f"malformed reply from the daemon: {reply!r}"
    types = [f.type for f in frames]
    assert set(types) <= set("PpIER"), types
    if "R" in types:
        assert types.index("R") == len(types) - 1
        assert frames[-1].payload in ("F", "M", "K", "U"), frames[-1]


def _assert_still_serving(mfad: Daemon, user: str, secret: str) -> None:
    """The daemon is alive, logs a real user in, and its log shows no unhandled exception."""
    assert mfad.proc is not None and mfad.proc.poll() is None
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login(user, [totp_now(secret)])[-1].payload == "S"
    mfad.stop()
    log = mfad.stderr()
    assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]


def _seed_login_user(mfad: Daemon) -> str:
    mfad.restart(lockout={"delay": 0})  # back-off would make the fuzzer wait, not explore
    secret = secrets.token_bytes(20)
    mfad.seed(LOGIN_USER, secret)
    return base64.b32encode(secret).decode()


def test_live_daemon_survives_random_bytes_on_the_pam_socket(mfad: Daemon) -> None:
    """Random byte streams on the PAM socket each get well-formed frames or nothing, and a
    real login succeeds afterwards."""
    secret = _seed_login_user(mfad)

    @fuzz(150)
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.tuples(_headers, st.binary(max_size=100)).map(b"".join),
        )
    )
    def one(data: bytes) -> None:
        _check_pam_reply(*_exchange(mfad.pam_socket, data))

    one()
    _assert_still_serving(mfad, LOGIN_USER, secret)


def test_live_daemon_survives_random_frame_sequences_on_the_pam_socket(mfad: Daemon) -> None:
    """Random sequences of STARTs, answers and stray frames, sometimes cut short, never log
    anyone in; the daemon only answers with well-formed frames; a real login succeeds."""
    secret = _seed_login_user(mfad)

    @fuzz(200)
    @given(_pam_frames, st.integers(0, 3), st.binary(max_size=8))
    def one(frames: list[tuple[int, bytes]], cut: int, tail: bytes) -> None:
        assume(not any(LOGIN_USER.encode() in payload for _, payload in frames))
        data = b"".join(_raw_frame(t, p) for t, p in frames) + tail
        _check_pam_reply(*_exchange(mfad.pam_socket, data[: len(data) - cut]))

    one()
    _assert_still_serving(mfad, LOGIN_USER, secret)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
SINGLE_OPS = [
    "status",
    "show",
    "enroll_begin",
    "enroll_confirm",
    "recovery_codes",
    "unlock",
    "require",
    "suspend",
    "resume",
    "disable",
    "reset",
    "exempt",
    "unexempt",
    "audit_verify",
    "audit_summary",
]
STREAMED_OPS = ["list", "audit_query", "audit_follow"]
# ops that change no account, or only clear counters: safe with `all: true`
HARMLESS_OPS = {
    "status",
    "show",
    "list",
    "unlock",
    "audit_verify",
    "audit_summary",
    "audit_query",
    "audit_follow",
}
_ops = st.sampled_from([*SINGLE_OPS, *STREAMED_OPS, "nope", "", "STATUS"])
_times = st.one_of(
    st.sampled_from(["2025-01-31T08:00:00Z", "2999-01-01T00:00:00+00:00", "yesterday", ""]), _json
)
_fields = {
    "user": st.one_of(_users, _json),
    "users": st.one_of(st.lists(_users, max_size=3), _json),
    "group": st.one_of(st.sampled_from(["root", "nogroup", "no-such-group"]), _json),
    "all": st.one_of(st.booleans(), _json),
    "code": st.one_of(_answers, _json),
    "reason": st.one_of(st.text(max_size=30), st.just("x" * 501), _json),
    "until": _times,
    "since": _times,
    "limit": st.one_of(st.integers(-2, 5), _json),
    "state": st.one_of(st.sampled_from(["active", "pending", "exempt", "bogus"]), _json),
    "sort": st.one_of(st.sampled_from(["user", "failed_attempts", "bogus"]), _json),
    "descending": st.one_of(st.booleans(), _json),
    "regenerate": st.one_of(st.booleans(), _json),
    "algorithm": st.one_of(st.sampled_from(["SHA1", "SHA512", "MD5"]), _json),
    "digits": st.one_of(st.sampled_from([6, 8, 7]), _json),
    "period": st.one_of(st.sampled_from([30, 60, 0]), _json),
    "event": st.one_of(st.sampled_from(["login", "control"]), _json),
}
_requests = st.one_of(
    st.fixed_dictionaries({"op": st.one_of(_ops, _json)}, optional=_fields).map(json.dumps),
    _json.map(json.dumps),
    st.text(max_size=60),
)
# the codes docs/protocol.md lists; anything else would be news to every client
ERROR_CODES = {
    "bad_request",
    "forbidden",
    "no_such_user",
    "not_enrolled",
    "already_enrolled",
    "wrong_code",
    "no_pending_enrolment",
    "unavailable",
}


def _control_exchange(mfad: Daemon, data: bytes) -> list[Frame]:
    frames, broken = asyncio.run(_read_all(_exchange(mfad.control_socket, data)[0]))
    assert not broken
    return frames


def _check_control_reply(frames: list[Frame], streamed: bool, follow: bool = False) -> None:
    """One JSON response (several for a streamed op), each ok or a documented error.

    A follow ends when the client closes its end, which `_exchange` does at once:
    it may end before its first frame.
    """
    assert (frames or follow) and {f.type for f in frames} <= {"J"}, frames
    assert streamed or len(frames) == 1, f"expected exactly one response, got {frames}"
    for frame in frames:
        response = json.loads(frame.payload)
        assert isinstance(response, dict) and isinstance(response["ok"], bool), response
        if not response["ok"]:
            assert response["error"] in ERROR_CODES, response
            assert isinstance(response["message"], str)


def _parsed(request: str) -> tuple[dict[str, Any], str]:
    """The request as an object (empty if it is none) and its op (empty if not text)."""
    with contextlib.suppress(ValueError):
        parsed = json.loads(request)
        if isinstance(parsed, dict):
            op = parsed.get("op")
            return parsed, op if isinstance(op, str) else ""
    return {}, ""


def _harms_login_user(request: str) -> bool:
    """Would this request touch the seeded account whose login ends the test?"""
    parsed, op = _parsed(request)
    return LOGIN_USER in request or ("all" in parsed and op not in HARMLESS_OPS)


USERS_NOT_A_LIST = json.dumps({"op": "status", "users": True})  # refused: crashed the refusal


def test_live_daemon_answers_random_control_requests_with_json_responses(
    mfad: Daemon,
) -> None:
    """Random requests (every documented op and unknown ones, odd targets, fields and types)
    each get one JSON response (a stream of them for list/audit_query/audit_follow), every
    error a documented code; a real login succeeds afterwards."""
    secret = _seed_login_user(mfad)

    @fuzz(250)
    @given(_requests)
    @example(USERS_NOT_A_LIST)
    def one(request: str) -> None:
        assume(not _harms_login_user(request))
        op = _parsed(request)[1]
        reply = _control_exchange(mfad, encode("Q", request))
        _check_control_reply(reply, op in STREAMED_OPS, op == "audit_follow")

    one()
    _assert_still_serving(mfad, LOGIN_USER, secret)


_CONTROL_CRASHES = {
    "a START frame on the control socket": encode("S", "v=1\0user=root\0"),
    "JSON nested 60,000 deep": encode("Q", "[" * 60000),
}


def test_live_daemon_handles_random_bytes_on_the_control_socket(mfad: Daemon) -> None:
    """Random bytes on the control socket get one response at most, never hang or kill the
    daemon, and leave no unhandled exception in its log."""
    secret = _seed_login_user(mfad)

    @fuzz(100)
    @given(
        st.one_of(
            st.binary(max_size=200), st.tuples(_headers, st.binary(max_size=60)).map(b"".join)
        )
    )
    @example(_CONTROL_CRASHES["a START frame on the control socket"])
    def one(data: bytes) -> None:
        assume(LOGIN_USER.encode() not in data)
        reply, _ = _exchange(mfad.control_socket, data)
        frames, _ = asyncio.run(_read_all(reply))
        assert [f.type for f in frames] in ([], ["J"])

    one()
    _assert_still_serving(mfad, LOGIN_USER, secret)


@pytest.mark.parametrize(
    "data",
    [
        *_CONTROL_CRASHES.values(),
        encode("Q", USERS_NOT_A_LIST),
    ],
    ids=[*_CONTROL_CRASHES, "users that is not a list, on a refused request"],
)
def test_regression_control_input_that_escaped_the_error_boundary(
    mfad: Daemon, data: bytes
) -> None:
    """Input that once escaped the control socket's single error boundary: the client gets a
    bad_request response or a closed connection, the refusal is audited, and the daemon's
    log shows no unhandled task exception."""
    secret = _seed_login_user(mfad)
    before = len(mfad.audit())
    frames = _control_exchange(mfad, data)
    assert [f.type for f in frames] in ([], ["J"])
    if frames:
        assert json.loads(frames[0].payload)["error"] == "bad_request"
    assert {r["event"] for r in mfad.audit()[before:]} & {"protocol_error", "control"}
    _assert_still_serving(mfad, LOGIN_USER, secret)


def test_regression_audit_summary_of_many_failing_users_still_answers(mfad: Daemon) -> None:
    """After failed logins under a few hundred long, distinct user names (a password spray),
    `audit_summary` still answers with one frame instead of dropping the connection with an
    unhandled exception (found by the long fuzz run: the answer outgrew MAX_FRAME)."""
    mfad.restart(lockout={"delay": 0}, login={"max_attempts": 1})
    secret = secrets.token_bytes(20)
    mfad.seed(LOGIN_USER, secret)
    for i in range(300):
        with PamWire(mfad.pam_socket) as wire:
            assert wire.login(f"spray{i:04d}" + "x" * 240, ["000000"])[-1].payload == "M"
    frames = _control_exchange(mfad, encode("Q", json.dumps({"op": "audit_summary"})))
    _check_control_reply(frames, streamed=False)
    _assert_still_serving(mfad, LOGIN_USER, base64.b32encode(secret).decode())


def test_config_never_constructs_python_objects(tmp_path: Path) -> None:
    """A python/object tag in the config is refused without running anything."""
    target = tmp_path / "made-by-yaml"
    with pytest.raises((ConfigError, yaml.YAMLError)):
        config.parse(f"mode: !!python/object/apply:os.mkdir ['{target}']\n")
    assert not target.exists()

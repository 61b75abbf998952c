"""`mfa` never hands a terminal a control character it was given: daemon-provided text (user
names in refused requests, PAM_RHOST of logins, messages) is shown escaped.

A terminal obeys ESC (U+001B), BEL, and the C1 control CSI (U+009B, which many terminals
take as ESC [): a user name or remote host holding them could, printed raw to an
administrator, recolour or clear the screen, retitle the window or fake lines of output.
The first tests put such text into a real mfad the way an attacker could (a refused
control request; a login through libpam and pam_mfa.so) and read it back with the real
`mfa`; the last one feeds every command a daemon answer with such text in every string.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyotp
import pytest
from click.testing import CliRunner, Result
from conftest import Daemon, totp_now

from mfa_cli.client import DaemonClient
from mfa_cli.errors import from_response
from mfa_cli.main import cli

EVIL_USER = "bob\x1b[31mred\x07bell\x9bcsi"
"""A user name with an SGR sequence (ESC [31m, red), BEL and CSI (U+009B)."""
EVIL_HOST = "203.0.113.9\x1b]0;owned\x07\x9b2J\x1b[2J"
"""A PAM_RHOST that would retitle the window (OSC ... BEL) and clear the screen twice."""
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Any C0 control but the newline ending each line, DEL, or any C1 control."""

MakeUser = Callable[..., str]


def escaped(text: str) -> str:
    """``text`` as `mfa` is to show it: a backslash doubled, each C0 control, DEL and C1
    control as backslash, x and two hex digits (written out here, not imported, so that
    the test does not check the code against itself)."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def wrong_code(secret: str) -> str:
    """A well-formed code that no step near now (±2) produces."""
    otp = pyotp.TOTP(secret)
    valid = {otp.at(time.time() + k * 30) for k in range(-2, 3)}
    return next(c for c in ("000000", "123456", "999999", "424242") if c not in valid)


def mfa(mfad: Daemon, *args: str, input: str | None = None) -> Result:
    """`mfa --socket <the test daemon's control socket> ARGS`, in-process, as root."""
    return CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), *args], input=input)


def assert_no_raw_control(text: str, what: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"{what} holds a raw {found.group()!r}: {text!r}"


def test_a_refused_request_naming_a_user_with_escapes_is_listed_escaped(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A non-admin asks about a user named with ESC [31m, BEL and CSI (U+009B): the daemon
    refuses it, and the refusal printed to them holds no raw control character. As root,
    `mfa audit` lists the refused request with the name shown escaped (`\\x1b[31m`,
    `\\x07`, `\\x9b`), never raw; `mfa audit --json` escapes U+009B as `\\u009b` too, and
    each line still decodes to the record as logged."""
    alice = make_user()

    refused = mfad.mfa_as(alice, "status", EVIL_USER)

    assert refused.returncode != 0, refused.stdout
    assert refused.stderr.startswith("Error: "), refused.stderr
    assert_no_raw_control(refused.stdout + refused.stderr, "the refusal")
    records = [
        r
        for r in mfad.audit()
        if (r.get("event"), r.get("outcome"), r.get("actor")) == ("control", "refused", alice)
    ]
    assert records, "the refused request is audited"
    naming = [r for r in records if EVIL_USER in json.dumps(r, ensure_ascii=False)]

    table = mfa(mfad, "audit", "--event", "control", "--outcome", "refused")

    assert table.exit_code == 0, table.output
    assert_no_raw_control(table.output, "mfa audit")
    assert alice in table.stdout
    if naming:
        assert escaped(EVIL_USER) in table.stdout
        assert "\\x1b[31mred\\x07bell\\x9bcsi" in table.stdout

    lines = mfa(mfad, "audit", "--json", "--event", "control", "--outcome", "refused")

    assert lines.exit_code == 0, lines.output
    assert_no_raw_control(lines.output, "mfa audit --json")
    printed = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r for r in printed if r.get("actor") == alice] == records
    if naming:
        assert "\\u009b" in lines.stdout


def test_a_remote_host_with_escapes_is_shown_escaped_everywhere(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """A PAM_RHOST holding ESC, BEL and U+009B (CSI), given at a failed and then a
        successful login through pam_mfa.so, is shown escaped and never raw by `mfa audit`
    (cut with an ellipsis to its column; whole with --full),
        `mfa audit summary`, `mfa status`, `mfa show`, `mfa list` and `mfa list --csv`; the
        JSON outputs (`mfa audit --json`, `mfa status/show/list --json`) escape it too
        (U+009B as \\u009b) and still decode to the host as given."""
    user = make_user()
    secret = mfad.enroll(user)
    assert pam_login(user, [wrong_code(secret)], rhost=EVIL_HOST).name != "PAM_SUCCESS"
    assert pam_login(user, [totp_now(secret)], rhost=EVIL_HOST).name == "PAM_SUCCESS"
    # What mfad kept is what must be shown escaped; today that is the host as given.
    stored = str(mfad.request("status", user=user)["last_rhost"])

    cut = mfa(mfad, "audit", "--user", user)  # the host is longer than its column
    assert_no_raw_control(cut.output, "mfa audit")
    assert escaped(stored)[:19] + "\u2026" in cut.stdout
    for args in (
        ["audit", "--full", "--user", user],
        ["audit", "summary"],
        ["status", user],
        ["show", user],
        ["list"],
        ["list", "--csv"],
    ):
        result = mfa(mfad, *args)

        assert result.exit_code == 0, (args, result.output)
        assert_no_raw_control(result.output, f"mfa {' '.join(args)}")
        assert escaped(stored) in result.stdout, (args, result.stdout)

    rows = list(csv.DictReader(io.StringIO(mfa(mfad, "list", "--csv").stdout)))
    assert [r["last_rhost"] for r in rows if r["user"] == user] == [escaped(stored)]

    for args in (
        ["audit", "--json", "--user", user],
        ["status", user, "--json"],
        ["show", user, "--json"],
        ["list", "--json"],
    ):
        result = mfa(mfad, *args)

        assert result.exit_code == 0, (args, result.output)
        assert_no_raw_control(result.output, f"mfa {' '.join(args)}")
        assert "\x9b" not in stored or "\\u009b" in result.stdout
        decoded = (
            [json.loads(line) for line in result.stdout.splitlines()]
            if args[0] == "audit"
            else json.loads(result.stdout)
        )
        assert stored in _strings(decoded)


# --- every command, against a daemon whose every string is hostile ---

POISON = "\x1b[2J\x07\x9b\x7f\x00"
"""Appended to every string the fake daemon sends: ESC [2J (clear screen), BEL, CSI, DEL, NUL."""
KEEP = frozenset({"state", "event", "ok", "error"})
"""Fields whose value steers the command (which branch prints); left as they are."""


def _poisoned(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return value if key in KEEP else value + POISON
    if isinstance(value, list):
        return [_poisoned(v, key) for v in value]
    if isinstance(value, dict):
        return {k: _poisoned(v, k) for k, v in value.items()}
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


_ROW = {
    "user": "alice",
    "state": "active",
    "method": "totp",
    "algorithm": "SHA1",
    "digits": 6,
    "period": 30,
    "enrolled_at": "2025-01-31T08:00:00+00:00",
    "last_verified_at": "2025-02-01T08:00:00+00:00",
    "last_rhost": "192.0.2.1",
    "failed_attempts": 1,
    "locked_until": "2025-02-02T08:00:00+00:00",
    "exempt_reason": "service",
    "exempt_until": "2025-03-01T00:00:00+00:00",
    "enrol_by": "2025-04-01T00:00:00+00:00",
    "clock_offset_steps": 1,
    "recovery_codes_left": 9,
    "enrolment_pending": False,
}
_RECORDS = [
    {
        "seq": 1,
        "time": "2025-01-31T08:00:00Z",
        "event": "login",
        "outcome": "success",
        "user": "alice",
        "service": "sshd",
        "rhost": "192.0.2.1",
        "reason": "correct_code",
    },
    {
        "seq": 2,
        "time": "2025-01-31T08:00:01Z",
        "event": "control",
        "outcome": "refused",
        "user": "bob",
        "op": "status",
        "actor": "mallory",
        "reason": "Forbidden",
    },
    {
        "seq": 3,
        "time": "2025-01-31T08:00:02Z",
        "event": "lock_set",
        "outcome": "locked",
        "user": "bob",
        "until": "2025-01-31T09:00:00Z",
    },
    {
        "seq": 4,
        "time": "2025-01-31T08:00:03Z",
        "event": "attempt",
        "outcome": "failure",
        "user": "bob",
        "reason": "wrong_code",
        "attempt": 2,
    },
    {"seq": 5, "time": "2025-01-31T08:00:04Z", "event": "daemon_start", "message": "hello"},
]
_CHANGES = {
    "changed": [{"user": "alice", "from": "active", "to": "suspended"}],
    "refused": [{"user": "bob", "error": "bad_state", "message": "bob is disabled"}],
}
ANSWERS: dict[str, Any] = {
    "status": _ROW,
    "show": {
        **_ROW,
        "history": [
            {
                "time": "2025-02-01T08:00:00+00:00",
                "service": "sshd",
                "rhost": "192.0.2.1",
                "method": "totp",
            }
        ],
    },
    "list": [
        {
            "accounts": [_ROW, {**_ROW, "user": "bob", "state": "pending"}],
            "more": False,
            "matched": 2,
        }
    ],
    "enroll_begin": {
        "user": "alice",
        "secret": "JBSWY3DPEHPK3PXP",
        "algorithm": "SHA1",
        "digits": 6,
        "period": 30,
        "uri": "otpauth://totp/x:alice?secret=JBSWY3DPEHPK3PXP&issuer=x",
    },
    "enroll_confirm": {"state": "active", "recovery_codes": ["ABCDE-FGHJK"]},
    "recovery_codes": {"remaining": 1, "codes": ["ABCDE-FGHJK"]},
    "unlock": {"unlocked": ["alice"]},
    "forget": {
        "forgotten": [{"user": "alice", "uid": 1001, "state": "active"}],
        "refused": [{"user": "bob", "error": "bad_state", "message": "bob is enrolled"}],
    },
    "audit_query": [{"records": _RECORDS, "more": False, "matched": 5}],
    "audit_follow": [
        {"records": _RECORDS, "more": True},
        {"records": [], "more": True, "following": True, "matched": 5},
        {"records": [], "more": True, "missed": 3},
        {"records": _RECORDS[:1], "more": False},
    ],
    "audit_verify": {
        "records": 4,
        "files": ["audit.jsonl"],
        "first_seq": 1,
        "last_seq": 4,
        "head": None,
        "first_bad": {
            "reason": "hash_mismatch",
            "file": "audit.jsonl",
            "line": 5,
            "seq": 5,
            "message": "edited",
            "record": '{"x": 1}',
        },
    },
    "audit_summary": {
        "since": "2025-01-31T08:00:00Z",
        "records": 5,
        "logins": {"success": 1},
        "failures_by_user": [{"user": "bob", "failures": 1, "wrong_codes": 2}],
        "failures_by_rhost": [{"rhost": "192.0.2.9", "failures": 1, "wrong_codes": 2}],
        "failure_reasons": [{"reason": "wrong_code", "count": 2}],
        "locks": [
            {
                "time": "2025-01-31T08:00:02Z",
                "user": "bob",
                "failures": 3,
                "until": "2025-01-31T09:00:00Z",
            }
        ],
        "locked_now": ["bob"],
        "source_blocks": [
            {
                "time": "2025-01-31T08:00:02Z",
                "rhost": "192.0.2.9",
                "user": "bob",
                "until": "2025-01-31T09:00:00Z",
            }
        ],
        "exempt_now": ["backup"],
        "suspended_now": ["carol"],
        "skipped": [{"user": "backup", "reason": "exempt", "count": 4}],
        "control": [
            {"time": "2025-01-31T08:00:01Z", "actor": "root", "op": "suspend", "user": "carol"}
        ],
        "refused": [{"actor": "mallory", "op": "status", "count": 1}],
        "never_enrolled": [{"user": "dave", "pending": True, "refused_logins": 2}],
        "tampered": [{"time": "2025-01-31T08:00:00Z", "reason": "head ahead of the log"}],
    },
}
for _action in ("require", "suspend", "resume", "disable", "reset", "exempt", "unexempt"):
    ANSWERS[_action] = _CHANGES

COMMANDS = [
    ["status", "alice"],
    ["show", "alice"],
    ["list"],
    ["list", "--csv"],
    ["enroll", "alice"],
    ["recovery-codes", EVIL_USER],
    ["recovery-codes", "alice", "--regenerate"],
    ["unlock", "alice", EVIL_USER],
    ["forget", "--yes", "alice", "bob"],
    ["audit"],
    ["audit", "--follow"],
    ["audit", "verify"],
    ["audit", "summary"],
    ["suspend", "alice", "bob"],
    ["disable", "alice", EVIL_USER],
    ["exempt", "alice", "--reason", "why\x1b[2J"],
]
JSON_COMMANDS = [
    ["status", "alice", "--json"],
    ["show", "alice", "--json"],
    ["list", "--json"],
    ["audit", "--json"],
    ["audit", "verify", "--json"],
    ["audit", "summary", "--json"],
]


@pytest.fixture
def hostile_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """DaemonClient answers every op from ANSWERS, with POISON appended to every string."""

    def request(self: DaemonClient, op: str, **fields: Any) -> dict[str, Any]:
        answer = ANSWERS[op]
        return {"ok": True, **_poisoned(answer[0] if isinstance(answer, list) else answer)}

    def stream(self: DaemonClient, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
        for frame in ANSWERS[op]:
            yield {"ok": True, **_poisoned(frame)}

    monkeypatch.setattr(DaemonClient, "request", request)
    monkeypatch.setattr(DaemonClient, "stream", stream)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_shows_daemon_text_escaped(hostile_daemon: None, args: list[str]) -> None:
    """Whatever strings the daemon answers with (names, states, hosts, times, reasons,
    messages, recovery codes, the enrolment key), every command prints them with each
    control character escaped (`\\x1b`, `\\x07`, `\\x9b`, `\\x7f`, `\\x00`), and never
    raw, on stdout and stderr alike; names given on the command line are shown escaped
    too."""
    result = CliRunner().invoke(cli, args, input="123456\ny\n")

    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_no_raw_control(result.output, f"mfa {' '.join(args)}")
    assert escaped(POISON) in result.output or escaped(EVIL_USER) in result.output, result.output


@pytest.mark.parametrize("args", JSON_COMMANDS, ids=" ".join)
def test_json_output_escapes_c1_and_del(hostile_daemon: None, args: list[str]) -> None:
    """Every --json output is JSON with every control character escaped, U+009B and DEL
    included (`\\u009b`, `\\u007f`), that decodes to exactly what the daemon sent."""
    result = CliRunner().invoke(cli, args)

    assert result.exit_code in (0, 7), result.output
    assert_no_raw_control(result.stdout, f"mfa {' '.join(args)}")
    assert "\\u009b" in result.stdout and "\\u007f" in result.stdout
    if args[0] == "audit" and len(args) == 2:
        decoded: Any = [json.loads(line) for line in result.stdout.splitlines()]
        assert decoded == _poisoned(_RECORDS)
    else:
        decoded = json.loads(result.stdout)
        assert any(text.endswith(POISON) for text in _strings(decoded))


@pytest.mark.parametrize("error", ["no_such_user", "forbidden", "locked", "something_new"])
def test_a_daemon_error_message_is_shown_escaped(
    error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal's message comes from the daemon and may quote a user name: `mfa` prints it
    after "Error: " with every control character escaped and a backslash doubled."""

    def request(self: DaemonClient, op: str, **fields: Any) -> dict[str, Any]:
        raise from_response(error, f"no user {EVIL_USER} here\\there")

    monkeypatch.setattr(DaemonClient, "request", request)

    result = CliRunner().invoke(cli, ["status", "alice"])

    assert result.exit_code not in (0, 2)
    assert_no_raw_control(result.output, "the error")
    assert result.stderr == f"Error: no user {escaped(EVIL_USER)} here\\\\there\n"

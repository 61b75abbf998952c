"""Bad input on the PAM socket ends only the offending connection, with an audit record."""

from __future__ import annotations

import struct

import pytest
from conftest import Daemon, totp_now
from wire import PamWire, start_payload


def _frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


BAD_INPUTS = {
    "zero length": struct.pack("!I", 0),
    "over the 64 KiB limit": struct.pack("!I", 65537) + b"S" * 100,
    "unknown frame type": _frame(b"Zhi"),
    "bad UTF-8": _frame(b"S\xff\xfe\xfd"),
    "ANSWER before START": _frame(b"A123456"),
    "START without version": _frame(b"Suser=root\0"),
    "START with wrong version": _frame(b"Sv=9\0user=root\0"),
    "START repeating a key": _frame(b"Sv=1\0user=root\0user=bin\0"),
    "START without user": _frame(b"Sv=1\0"),
    "user with a newline": _frame(b"Sv=1\0user=ro\not\0"),
    "user with a slash": _frame(b"Sv=1\0user=../../x\0"),
    "user of 300 bytes": _frame(b"Sv=1\0user=" + b"u" * 300 + b"\0"),
    "item without =": _frame(b"Sv=1\0user=root\0x"),
}


def _expect_refused(mfad: Daemon, data: bytes) -> None:
    """The daemon answers FAILURE (never silence, which fail=open would read as 'down')
    and closes."""
    with PamWire(mfad.pam_socket) as wire:
        wire.send_raw(data)
        frame = wire.recv()
        assert (frame.type, frame.payload) == ("R", "F")
        assert wire.closed(), "the daemon kept a connection that broke the protocol"


def test_each_bad_input_drops_only_its_connection_while_a_login_succeeds(mfad: Daemon) -> None:
    """A login in progress succeeds after a dozen malformed connections came and went."""
    secret = mfad.enroll("root")
    with PamWire(mfad.pam_socket) as good:
        good.send("S", start_payload("root", service="sshd"))
        assert good.recv().type == "P"
        for data in BAD_INPUTS.values():
            _expect_refused(mfad, data)
        good.send("A", totp_now(secret))
        assert good.recv().payload == "S"
    errors = [r for r in mfad.audit() if r["event"] == "protocol_error"]
    assert len(errors) == len(BAD_INPUTS)
    assert all(r["outcome"] == "error" and r["reason"] for r in errors)
    assert mfad.proc is not None and mfad.proc.poll() is None


def test_second_start_mid_conversation_is_a_protocol_error(mfad: Daemon) -> None:
    """Frames out of order after START end the connection without a RESULT."""
    mfad.enroll("root")
    with PamWire(mfad.pam_socket) as wire:
        wire.send("S", start_payload("root"))
        assert wire.recv().type == "P"
        wire.send("S", start_payload("root"))
        assert wire.recv().payload == "F"
        assert wire.closed()
    error, outcome = mfad.audit()[-2:]
    assert error["event"] == "protocol_error"
    assert "expected ANSWER" in error["reason"]
    assert (outcome["event"], outcome["outcome"], outcome["reason"]) == (
        "login",
        "failure",
        "protocol_error",
    )


@pytest.mark.parametrize("answer", ["abcdef", "12 34 5x", "1" * 60000, "", "\u0661" * 6])
def test_odd_answers_count_as_wrong_codes(mfad: Daemon, answer: str) -> None:
    """Non-digit, empty or huge answers are refused like a wrong code, never crash the session."""
    mfad.enroll("root")
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login("root", [answer] * 3)
    assert [f.payload for f in frames if f.type == "E"][-1] == (
        "Too many failed attempts with incorrect verification code."
    )
    assert frames[-1].payload == "M"
    reasons = {r["reason"] for r in mfad.audit() if r["event"] == "attempt"}
    assert reasons == {"malformed_code"}


def test_answer_frame_of_one_megabyte_is_dropped(mfad: Daemon) -> None:
    """A 1 MB answer exceeds the frame limit: the connection ends, the daemon lives on."""
    mfad.enroll("root")
    with PamWire(mfad.pam_socket) as wire:
        wire.send("S", start_payload("root"))
        assert wire.recv().type == "P"
        wire.send_header(1024 * 1024 + 1)
        assert wire.recv().payload == "F"
        assert wire.closed()
    assert [r["event"] for r in mfad.audit()[-2:]] == ["protocol_error", "login"]
    assert mfad.request("status", user="root")["ok"]


def test_unknown_user_gets_the_same_conversation_as_an_enrolled_one(mfad: Daemon) -> None:
    """In required mode a name nobody knows is prompted three times like a real user."""
    mfad.enroll("root")
    with PamWire(mfad.pam_socket) as wire:
        real = wire.login("root", ["000000"] * 3)
    with PamWire(mfad.pam_socket) as wire:
        ghost = wire.login("nosuchuser-xyz", ["000000"] * 3)
    assert [(f.type, f.payload) for f in real] == [(f.type, f.payload) for f in ghost]


def test_silent_client_is_disconnected_after_start_timeout(mfad: Daemon) -> None:
    """A client that connects and sends nothing is dropped (START deadline), audited."""
    with PamWire(mfad.pam_socket, timeout=20) as wire:
        assert wire.recv().payload == "F"
        assert wire.closed()
    assert mfad.audit()[-1]["reason"] == "no START frame in time"

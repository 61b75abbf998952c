"""Every audit record leaves the host as it is written: to journald or syslog, structured.

The test binds its own Unix datagram socket and points mfad's ``audit.forward_socket``
at it, then reads what a journald or a syslog daemon would have received.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon
from wire import PamWire


@pytest.fixture
def sink(mfad: Daemon) -> Iterator[socket.socket]:
    path = mfad.tmp / "run" / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def _login(mfad: Daemon) -> None:
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login("root", [], service="cron")[-1].payload == "K"


def _journal_fields(data: bytes) -> dict[str, str]:
    """Parse journald's native protocol: NAME=value lines, or NAME, newline, le64 length,
    the value and a newline."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8 : 8 + size].decode()
            data = rest[8 + size + 1 :]
    return fields


def _until_login(sink: socket.socket) -> list[bytes]:
    got: list[bytes] = []
    while not got or b"login" not in got[-1]:
        got.append(sink.recv(65536))
    return got


def test_records_go_to_journald_with_their_fields(mfad: Daemon, sink: socket.socket) -> None:
    """With `forward: journald`, each record arrives as one native-protocol datagram:
    MESSAGE is the record's line as in the log file, and every field (the seal's too) is
    an MFAD_ field, so a collector can filter on them."""
    mfad.base["services"] = {"cron": "off"}
    mfad.restart(audit={"forward": "journald", "forward_socket": sink.getsockname()})
    _login(mfad)
    fields = _journal_fields(_until_login(sink)[-1])
    logged = mfad.audit_path.read_text().splitlines()[-1]
    assert fields["MESSAGE"] == logged
    assert fields["SYSLOG_IDENTIFIER"] == "mfad-audit"
    record = json.loads(logged)
    assert fields["MFAD_EVENT"] == "login" and fields["MFAD_OUTCOME"] == "skipped"
    assert fields["MFAD_SEQ"] == str(record["seq"]) and fields["MFAD_PREV"] == record["prev"]


def test_records_go_to_syslog_as_rfc5424_structured_data(mfad: Daemon, sink: socket.socket) -> None:
    """With `forward: syslog`, each record is an RFC 5424 message at authpriv: the fields as
    structured data under mfad@32473, the record's line as the message."""
    mfad.base["services"] = {"cron": "off"}
    mfad.restart(audit={"forward": "syslog", "forward_socket": sink.getsockname()})
    _login(mfad)
    message = _until_login(sink)[-1].decode()
    logged = mfad.audit_path.read_text().splitlines()[-1]
    record = json.loads(logged)
    assert re.match(r"<86>1 \S+ \S+ mfad-audit - login \[mfad@32473 ", message), message
    assert f'seq="{record["seq"]}"' in message and 'event="login"' in message
    assert message.endswith("] " + logged)


def test_a_missing_log_socket_never_fails_or_delays_a_login(mfad: Daemon) -> None:
    """forward_socket names a socket that is not there: logins go on, recorded in the file."""
    mfad.base["services"] = {"cron": "off"}
    gone = Path(mfad.tmp / "run" / "nobody.sock")
    mfad.restart(audit={"forward": "syslog", "forward_socket": str(gone)})
    _login(mfad)
    assert mfad.audit()[-1]["event"] == "login"

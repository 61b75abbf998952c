"""A copy of every audit record to the local journald or syslog, as it is written.

The copy is what leaves the host: journald or syslog forwards it to a remote
collector, where root on this host cannot reach it afterwards. Each record goes
as one datagram, with its fields structured:

* journald's native protocol (``/run/systemd/journal/socket``): ``MESSAGE`` is
  the record's JSON line, every field also as ``MFAD_<NAME>`` (``MFAD_SEQ``,
  ``MFAD_EVENT``, ``MFAD_MAC``...), ``SYSLOG_IDENTIFIER=mfad-audit``;
* else RFC 5424 to ``/dev/log``: facility authpriv, the fields as structured
  data ``[mfad@32473 seq="..." event="..." ...]``, the JSON line as the message.

A send never blocks and never fails a login: the socket is non-blocking, and a
missing socket, a full queue or an oversized record is counted and given up
(the log file has every record). A missing socket is looked for again at most
every ``RETRY`` seconds.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_SOCKET = Path("/dev/log")
MODES = ("auto", "journald", "syslog", "off")
RETRY = 10.0
SD_ID = "mfad@32473"  # 32473: the enterprise number RFC 5612 sets aside for examples
_FACILITY_AUTHPRIV = 10
_INFO, _WARNING = 6, 4
_FIELD = re.compile(r"[^A-Z0-9_]")
_SD_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_oplog = structlog.get_logger("mfad.audit")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def journal_datagram(record: Mapping[str, Any], line: str) -> bytes:
    """The journald native-protocol datagram for one record."""
    fields: list[tuple[str, str]] = [
        ("MESSAGE", line),
        ("SYSLOG_IDENTIFIER", "mfad-audit"),
        ("SYSLOG_FACILITY", str(_FACILITY_AUTHPRIV)),
        ("PRIORITY", str(_priority(record))),
    ]
    for name, value in record.items():
        fields.append(("MFAD_" + _FIELD.sub("_", name.upper()), _text(value)))
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:  # the binary form: name, newline, little-endian length, value
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def _sd_value(value: Any) -> str:
    """An RFC 5424 PARAM-VALUE: '"', '\\' and ']' escaped with a backslash."""
    text = _text(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_datagram(record: Mapping[str, Any], line: str, host: str) -> bytes:
    """The RFC 5424 message for one record."""
    params = " ".join(
        f'{_SD_NAME.sub("_", name)[:32]}="{_sd_value(value)}"' for name, value in record.items()
    )
    pri = _FACILITY_AUTHPRIV * 8 + _priority(record)
    stamp = str(record.get("time", "-"))
    head = f"<{pri}>1 {stamp} {host or '-'} mfad-audit - {record.get('event', '-')}"
    return f"{head} [{SD_ID} {params}] {line}".encode("utf-8", "replace")


def _priority(record: Mapping[str, Any]) -> int:
    return _INFO if record.get("outcome") in ("success", "pending", "skipped") else _WARNING


class Forwarder:
    """Sends records to journald or syslog without ever waiting for them."""

    def __init__(self, mode: str = "auto", path: Path | None = None) -> None:
        self.mode = mode
        self.path = path
        self.kind = ""
        self.sent = self.dropped = 0
        self._sock: socket.socket | None = None
        self._target = ""
        self._next_try = 0.0
        self._host = socket.gethostname()

    def _connect(self) -> None:
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + RETRY
        for kind, default in (("journald", JOURNAL_SOCKET), ("syslog", SYSLOG_SOCKET)):
            if self.mode not in ("auto", kind):
                continue
            path = self.path if self.path is not None and self.mode != "auto" else default
            if not path.exists():
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock, self._target, self.kind = sock, str(path), kind
            return

    def send(self, record: Mapping[str, Any], line: str) -> None:
        if self.mode == "off":
            return
        if self._sock is None:
            self._connect()
            if self._sock is None:
                self.dropped += 1
                return
        if self.kind == "journald":
            data = journal_datagram(record, line)
        else:
            data = syslog_datagram(record, line, self._host)
        try:
            self._sock.sendto(data, self._target)
            self.sent += 1
        except OSError as exc:  # gone, full, too large: the file has the record
            self.dropped += 1
            if not isinstance(exc, BlockingIOError):
                self._sock.close()
                self._sock = None
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    _oplog.warning(
                        "audit_forward_failed",
                        target=self._target,
                        error=exc.strerror,
                        dropped=self.dropped,
                    )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

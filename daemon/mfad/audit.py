"""The audit trail: one JSON object per line, hash-chained, to a file and stderr.

Each record carries ``prev``, the SHA-256 of the previous line's bytes, and a
``seq`` number, so editing, deleting or reordering a line breaks the chain at
that record (``mfa audit verify``). Records pass through a structlog processor
chain; the last step, the sink, writes them, on the event loop: one
``O_APPEND`` write of a few hundred bytes to the page cache and a ``pwrite`` of
the head file cost a few microseconds, less than a trip to a thread and back
(bench/RESULTS.md), and one writer extends the chain strictly in order. A full
disk fails at once (ENOSPC), it does not wait. The copy to stderr goes through
a thread of its own and is never waited for: under systemd stderr is a pipe to
journald, which can stall; the file is the record.

Beside the log, ``<log>.head`` holds the sequence number and hash of the last
record written (rewritten in place after every record). It lets the chain go on
across log rotation, and it exposes truncation: a log whose last record is not
the head was cut, which the daemon records at start and ``verify`` reports.

A record that cannot be written raises AuditError: the caller fails the login
closed. A partial line left by a full disk is cut off again so the file stays
parseable and the chain intact.

Secrets, codes and recovery codes are never passed here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from mfa_wire.events import Event, Outcome
from mfad.errors import AuditError

GENESIS = "0" * 64
_oplog = structlog.get_logger("mfad.audit")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(path: Path) -> bytes | None:
    """The last complete line of a file, read backwards so a large log costs nothing."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            chunk = b""
            pos = end
            while pos > 0:
                step = min(4096, pos)
                pos -= step
                f.seek(pos)
                chunk = f.read(step) + chunk
                lines = chunk.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    return lines[-1] or None
    except FileNotFoundError:
        return None
    return None


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def read_head(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the last record written to the log at `path`, if recorded."""
    try:
        seq, digest = head_path(path).read_text().split()
        return int(seq), digest
    except (OSError, ValueError):
        return None


def _cut_partial_line(path: Path) -> bytes:
    """Truncate a last line that has no newline; the bytes cut (kept as evidence)."""
    try:
        with path.open("r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return b""
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return b""
            pos = size
            while pos > 0:
                step = min(4096, pos)
                pos -= step
                f.seek(pos)
                newline = f.read(step).rfind(b"\n")
                if newline >= 0:
                    pos += newline + 1
                    break
            f.seek(pos)
            fragment = f.read()
            f.truncate(pos)
            return fragment
    except FileNotFoundError:
        return b""


def _one_ahead(last: bytes, head: tuple[int, str]) -> bool:
    """The log's last record directly follows the head's: killed between the two writes."""
    try:
        record = json.loads(last)
    except ValueError:
        return False
    return bool(record.get("seq") == head[0] + 1 and record.get("prev") == head[1])


def _seq_of(line: bytes) -> int:
    try:
        return int(json.loads(line)["seq"])
    except (ValueError, KeyError, TypeError):
        return 0


class _StderrCopy:
    """Copies records to stderr from a thread, so a stalled journald never stalls a login.

    The loop only appends to a deque (no lock, no wake-up); the thread writes
    what piled up every ``PERIOD`` seconds, in one write. Waking it per record
    cost more CPU than the record itself (bench/RESULTS.md). At most
    ``BACKLOG`` lines wait; beyond that the copy drops lines (the log file has
    every record) and says how many, once it can write again.
    """

    PERIOD = 0.05
    BACKLOG = 10_000

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="mfad-audit-stderr", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        if len(self._lines) < self.BACKLOG:
            self._lines.append(line)
        else:
            self._dropped += 1

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2.0)

    def _drain(self) -> None:
        while not self._closing.wait(self.PERIOD):
            self._write()
        self._write()

    def _write(self) -> None:
        batch = []
        with contextlib.suppress(IndexError):
            while True:
                batch.append(self._lines.popleft())
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            batch.append(
                json.dumps(
                    {
                        "event": "audit_copy_dropped",
                        "lines": dropped,
                        "reason": "stderr was not being read; the audit log file has every record",
                    }
                )
            )
        if batch:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("\n".join(batch) + "\n")
                sys.stderr.flush()


class _Sink:
    """structlog's 'logger': appends a rendered record to the file and to stderr."""

    def __init__(self, path: Path, copy: _StderrCopy | None) -> None:
        self.path = path
        self.copy = copy
        self.fd = -1
        self.head_fd = -1
        self.prev = GENESIS
        self.seq = 0

    def open(self) -> list[tuple[Event, dict[str, Any]]]:
        """Open the log and its head; return the records that opening calls for.

        A partial last line (the power went mid-write, or a hand cut the file) is
        moved into an ``audit_repaired`` record: a glued-on next record would
        corrupt both, and nothing is thrown away. A head one record behind the log
        is a kill between the two writes, not tampering. Anything else that disagrees is tampering.
        """
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        notes: list[tuple[Event, dict[str, Any]]] = []
        cut = _cut_partial_line(self.path)
        if cut:
            notes.append(
                (
                    Event.AUDIT_REPAIRED,
                    {
                        "outcome": Outcome.ERROR,
                        "bytes_cut": len(cut),
                        "fragment": cut[:4096].decode("utf-8", errors="replace"),
                        "reason": f"a partial record of {len(cut)} bytes at the end of the log was "
                        "moved into this record (mfad stopped in the middle of writing it)",
                    },
                )
            )
        last = _last_line(self.path)
        head = read_head(self.path)
        if last is not None:
            self.seq, self.prev = _seq_of(last), line_hash(last)
            if head is not None and head != (self.seq, self.prev) and not _one_ahead(last, head):
                notes.append(
                    (
                        Event.AUDIT_TAMPERED,
                        {
                            "outcome": Outcome.ERROR,
                            "log_seq": self.seq,
                            "head_seq": head[0],
                            "reason": f"the log ends at record {self.seq} but record {head[0]} was "
                            "written last: records were removed or altered while mfad was "
                            "not running",
                        },
                    )
                )
        elif head is not None:  # rotated away: the new file continues the chain
            self.seq, self.prev = head
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.head_fd = os.open(head_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return notes

    def close(self) -> None:
        for fd in (self.fd, self.head_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.head_fd = -1

    def chain(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        """The last processor: number, chain and render the record."""
        record = {
            "seq": self.seq + 1,
            "time": event.pop("time"),
            "host": event.pop("host"),
            "event": event.pop("event"),
        }
        record.update(event)
        record["prev"] = self.prev
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    def msg(self, line: str) -> str:
        data = line.encode("utf-8") + b"\n"
        size = -1
        try:
            size = os.fstat(self.fd).st_size
            rest = memoryview(data)
            while rest:  # a short write is retried, so a full disk reports itself as ENOSPC
                rest = rest[os.write(self.fd, rest) :]
        except OSError as exc:
            if size >= 0:  # cut a partial line off again: the file stays parseable
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, size)
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        self.prev = line_hash(data)
        self.seq += 1
        try:
            os.pwrite(self.head_fd, f"{self.seq:020d} {self.prev}\n".encode(), 0)
        except OSError as exc:
            raise AuditError(f"cannot update {head_path(self.path)}: {exc.strerror}") from exc
        if self.copy is not None:
            self.copy.put(line)
        return line

    info = msg


class AuditLog:
    """Append-only, hash-chained audit records; `record` raises AuditError on failure."""

    def __init__(
        self,
        path: Path,
        *,
        host: str = "",
        to_stderr: bool = True,
        required: Callable[[], bool] = lambda: True,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
        on_error: Callable[[AuditError], None] | None = None,
    ) -> None:
        self._sink = _Sink(path, _StderrCopy() if to_stderr else None)
        self._required = required  # read per record, so a reload applies at once
        self._observer = observer  # told of each record written (metrics.Metrics.observe)
        self._on_error = on_error  # told of each record that could not be
        self._log = structlog.wrap_logger(
            self._sink,
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
                self._add_host,
                self._sink.chain,
            ],
            # bound once: the lazy proxy structlog returns otherwise binds anew per record
            cache_logger_on_first_use=True,
        )
        self._host = host or socket.gethostname()  # a fleet tells its hosts apart by it
        self._subscribers: set[asyncio.Queue[str]] = set()

    @property
    def path(self) -> Path:
        return self._sink.path

    @property
    def last_seq(self) -> int:
        """The seq of the last record written (0 before the first)."""
        return self._sink.seq

    @property
    def host(self) -> str:
        """The host name every record carries."""
        return self._host

    def subscribe(self) -> asyncio.Queue[str]:
        """A queue that receives every record written from now on, as its JSON line."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.discard(queue)

    def _add_host(self, _l: Any, _n: str, event: MutableMapping[str, Any]) -> Any:
        event["host"] = self._host
        return event

    async def open(self) -> None:
        """Open the log; a log cut or altered since the last run is itself recorded."""
        try:
            notes = self._sink.open()
        except OSError as exc:
            path = self._sink.path
            raise AuditError(f"cannot open the audit log {path}: {exc.strerror}") from exc
        for event, fields in notes:
            await self.record(event, **fields)

    async def reopen(self) -> None:
        """After logrotate moved the file: continue the chain in a new one."""
        self._sink.close()
        for event, fields in self._sink.open():
            await self.record(event, **fields)

    def bind(self, fields: dict[str, Any]) -> BoundAudit:
        """A writer that adds `fields` (kept by reference: the caller may add to them) to
        every record, as a login's session, user, service and host."""
        return BoundAudit(self, fields)

    async def record(self, event: Event, **fields: Any) -> None:
        """Write one record; None-valued fields are dropped to keep lines short."""
        clean = {k: v for k, v in fields.items() if v is not None}
        try:
            line: str = self._log.info(event, **clean)
        except AuditError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            if self._required():
                raise
            _oplog.error(
                "audit_unwritable",
                error=str(exc),
                event_lost=event,
                reason="audit.required is false: going on unrecorded",
            )
            return
        if self._observer is not None:
            self._observer(event, clean)
        for follower in self._subscribers:
            if not follower.full():  # a stalled follower misses records; the file has them all
                follower.put_nowait(line)

    async def close(self) -> None:
        self._sink.close()
        if self._sink.copy is not None:
            self._sink.copy.close()


class BoundAudit:
    """An AuditLog with fields of its own in every record (AuditLog.bind)."""

    def __init__(self, log: AuditLog, fields: dict[str, Any]) -> None:
        self._log = log
        self.fields = fields

    async def record(self, event: Event, **extra: Any) -> None:
        await self._log.record(event, **{**self.fields, **extra})

    async def record_quietly(self, event: Event, **extra: Any) -> None:
        """For what is already failing: an audit log that cannot be written is logged, not
        raised (the login fails closed either way)."""
        try:
            await self.record(event, **extra)
        except AuditError as exc:
            _oplog.error("audit_unwritable", error=str(exc), event_lost=event, **self.fields)

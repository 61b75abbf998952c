"""The audit trail: one JSON object per line, hash-chained, to a file and stderr.

Each record carries ``prev``, the SHA-256 of the previous line's bytes, and a
``seq`` number, so editing, deleting or reordering a line breaks the chain at
that record (``mfa audit verify``). Records pass through a structlog processor
chain; the last step, the sink, writes them. Writing happens on one dedicated
thread so a slow or full disk never stalls the event loop, and so the chain is
extended strictly in order.

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
import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

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


class _Sink:
    """structlog's 'logger': appends a rendered record to the file and to stderr."""

    def __init__(self, path: Path, to_stderr: bool) -> None:
        self.path = path
        self.to_stderr = to_stderr
        self.fd = -1
        self.head_fd = -1
        self.prev = GENESIS
        self.seq = 0

    def open(self) -> list[tuple[str, dict[str, Any]]]:
        """Open the log and its head; return the records that opening calls for.

        A partial last line (the power went mid-write, or a hand cut the file) is
        moved into an ``audit_repaired`` record: a glued-on next record would
        corrupt both, and nothing is thrown away. A head one record behind the log
        is a kill between the two writes, not tampering. Anything else that disagrees is tampering.
        """
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        notes: list[tuple[str, dict[str, Any]]] = []
        cut = _cut_partial_line(self.path)
        if cut:
            notes.append(("audit_repaired", {
                "outcome": "error", "bytes_cut": len(cut),
                "fragment": cut[:4096].decode("utf-8", errors="replace"),
                "reason": f"a partial record of {len(cut)} bytes at the end of the log was "
                          "moved into this record (mfad stopped in the middle of writing it)",
            }))
        last = _last_line(self.path)
        head = read_head(self.path)
        if last is not None:
            self.seq, self.prev = _seq_of(last), line_hash(last)
            if head is not None and head != (self.seq, self.prev) and not _one_ahead(last, head):
                notes.append(("audit_tampered", {
                    "outcome": "error", "log_seq": self.seq, "head_seq": head[0],
                    "reason": f"the log ends at record {self.seq} but record {head[0]} was "
                              "written last: records were removed or altered while mfad was "
                              "not running",
                }))
        elif head is not None:  # rotated away: the new file continues the chain
            self.seq, self.prev = head
        self.fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        self.head_fd = os.open(
            head_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        return notes

    def close(self) -> None:
        for fd in (self.fd, self.head_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.head_fd = -1

    def chain(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        """The last processor: number, chain and render the record."""
        record = {
            "seq": self.seq + 1, "time": event.pop("time"), "host": event.pop("host"),
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
        if self.to_stderr:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        return line

    info = msg


class AuditLog:
    """Append-only, hash-chained audit records; `record` raises AuditError on failure."""

    def __init__(
        self, path: Path, *, to_stderr: bool = True, required: Callable[[], bool] = lambda: True
    ) -> None:
        self._sink = _Sink(path, to_stderr)
        self._required = required  # read per record, so a reload applies at once
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfad-audit")
        self._log = structlog.wrap_logger(
            self._sink,
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
                self._add_host,
                self._sink.chain,
            ],
        )
        self._host = socket.gethostname()
        self._subscribers: set[asyncio.Queue[str]] = set()

    @property
    def path(self) -> Path:
        return self._sink.path

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

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Open the log; a log cut or altered since the last run is itself recorded."""
        try:
            notes = await self._run(self._sink.open)
        except OSError as exc:
            path = self._sink.path
            raise AuditError(f"cannot open the audit log {path}: {exc.strerror}") from exc
        for event, fields in notes:
            await self.record(event, **fields)

    async def reopen(self) -> None:
        """After logrotate moved the file: continue the chain in a new one."""
        def swap() -> list[tuple[str, dict[str, Any]]]:
            self._sink.close()
            return self._sink.open()

        for event, fields in await self._run(swap):
            await self.record(event, **fields)

    async def record(self, event: str, **fields: Any) -> None:
        """Write one record; None-valued fields are dropped to keep lines short."""
        clean = {k: v for k, v in fields.items() if v is not None}
        try:
            line: str = await self._run(lambda: self._log.info(event, **clean))
        except AuditError as exc:
            if self._required():
                raise
            _oplog.error("audit_unwritable", error=str(exc), event_lost=event,
                         reason="audit.required is false: going on unrecorded")
            return
        for queue in self._subscribers:
            if not queue.full():  # a stalled follower misses records; the file has them all
                queue.put_nowait(line)

    async def close(self) -> None:
        await self._run(self._sink.close)
        self._executor.shutdown(wait=True)

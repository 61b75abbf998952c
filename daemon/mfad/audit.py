"""The audit trail: one JSON object per line, hash-chained, to a file and stderr.

Each record carries ``prev``, the SHA-256 of the previous line's bytes, and a
``seq`` number, so editing, deleting or reordering a line breaks the chain at
that record (``mfa audit verify``). Records pass through a structlog processor
chain; the last step, the sink, writes them. Writing happens on one dedicated
thread so a slow or full disk never stalls the event loop, and so the chain is
extended strictly in order.

A record that cannot be written raises AuditError: the caller fails the login
closed. A partial line left by a full disk is cut off again so the file stays
parseable and the chain intact.

Secrets, codes and recovery codes are never passed here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from mfad.errors import AuditError

GENESIS = "0" * 64


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


class _Sink:
    """structlog's 'logger': appends a rendered record to the file and to stderr."""

    def __init__(self, path: Path, to_stderr: bool) -> None:
        self.path = path
        self.to_stderr = to_stderr
        self.fd = -1
        self.prev = GENESIS
        self.seq = 0

    def open(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        last = _last_line(self.path)
        if last is not None:
            try:
                record = json.loads(last)
                self.seq = int(record["seq"])
            except (ValueError, KeyError, TypeError):
                self.seq = 0
            self.prev = line_hash(last)
        self.fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def chain(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        """The last processor: number, chain and render the record."""
        record = {
            "seq": self.seq + 1, "time": event.pop("time"), "host": event.pop("host"),
            "event": event.pop("event"),
        }
        record.update(event)
        record["prev"] = self.prev
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    def msg(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        try:
            size = os.fstat(self.fd).st_size
            written = os.write(self.fd, data)
            if written != len(data):
                os.ftruncate(self.fd, size)
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        self.prev = line_hash(data)
        self.seq += 1
        if self.to_stderr:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    info = msg


class AuditLog:
    """Append-only, hash-chained audit records; `record` raises AuditError on failure."""

    def __init__(self, path: Path, *, to_stderr: bool = True) -> None:
        self._sink = _Sink(path, to_stderr)
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

    def _add_host(self, _l: Any, _n: str, event: MutableMapping[str, Any]) -> Any:
        event["host"] = self._host
        return event

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        try:
            await self._run(self._sink.open)
        except OSError as exc:
            path = self._sink.path
            raise AuditError(f"cannot open the audit log {path}: {exc.strerror}") from exc

    async def reopen(self) -> None:
        """After logrotate moved the file: continue the chain in a new one."""
        def swap() -> None:
            self._sink.close()
            prev, seq = self._sink.prev, self._sink.seq
            self._sink.open()
            if self._sink.seq == 0:  # a fresh file continues the old chain
                self._sink.prev, self._sink.seq = prev, seq

        await self._run(swap)

    async def record(self, event: str, **fields: Any) -> None:
        """Write one record; None-valued fields are dropped to keep lines short."""
        clean = {k: v for k, v in fields.items() if v is not None}
        await self._run(lambda: self._log.info(event, **clean))

    async def close(self) -> None:
        await self._run(self._sink.close)
        self._executor.shutdown(wait=True)

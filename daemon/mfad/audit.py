"""The audit trail: one JSON object per line, hash-chained and sealed, to a file, stderr
and the local journald or syslog.

Each record carries ``prev``, the SHA-256 of the previous line's bytes, and a
``seq`` number, so editing, deleting or reordering a line breaks the chain at
that record (``mfa audit verify``). Once ``mfa audit seal-init`` has run, each
record also carries its ``epoch`` and a ``mac`` with that epoch's key, and each
epoch ends with an ``audit_sealed`` record (seal.py): without the verification
key, which is kept off the host, nobody can rewrite a record of an epoch that
has ended. ``_Sink._write`` is the one place a record is made; it hands every
record, as the dict and as its line, to ``AuditLog._publish``. The sink writes
on the event loop: one ``O_APPEND`` write of a few hundred bytes to the page
cache and a ``pwrite`` of the head file cost a few microseconds, less than a
trip to a thread and back (bench/RESULTS.md), and one writer extends the
chain strictly in order. A full disk fails at once (ENOSPC), it does not wait.
The copy to stderr goes through a thread of its own and is never waited for:
under systemd stderr is a pipe to journald, which can stall; the file is the
record. The structured copy to journald or syslog (auditforward.py) is one
non-blocking datagram. Replacing the sealing key file (fsync) runs in a thread.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from mfa_wire.events import Event, Outcome
from mfad import seal
from mfad.auditforward import Forwarder
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
    """Appends records to the file, sealed when sealing is set up, and hands each on."""

    def __init__(
        self,
        path: Path,
        publish: Callable[[dict[str, Any], str], None],
        seal_path: Path | None,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.publish = publish
        self.seal_path = seal_path
        self.clock = clock
        self.host = socket.gethostname()
        self.fd = -1
        self.head_fd = -1
        self.prev = GENESIS
        self.seq = 0
        self.seal: seal.SealState | None = None
        self.last_epoch: int | None = None  # the epoch of the last record written
        self.last_sealed = False  # the last record is the seal of last_epoch
        self.key_dirty = False  # the key evolved in memory; the file still has an older one

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
            self._note_last(last)
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
        self._load_seal()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.head_fd = os.open(head_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return notes

    def _note_last(self, last: bytes) -> None:
        try:
            record = json.loads(last)
        except ValueError:
            return
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int):
            self.last_epoch = epoch
            self.last_sealed = record.get("event") == Event.AUDIT_SEALED

    def _load_seal(self) -> None:
        if self.seal_path is None or self.seal is not None:
            return  # a reopen after rotation keeps the key it has in memory
        try:
            state = seal.load(self.seal_path)
        except seal.SealError as exc:
            raise AuditError(str(exc)) from exc
        if state is None:
            return
        # The key file lags the log after a crash between a record and the key's
        # replacement: catch up, never back (the log's epochs are what was sealed).
        if self.last_epoch is not None:
            state.advance(self.last_epoch + (1 if self.last_sealed else 0))
        self.seal = state

    def close(self) -> None:
        for fd in (self.fd, self.head_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.head_fd = -1

    def append(self, event: Event, fields: dict[str, Any], us: int | None = None) -> dict[str, Any]:
        """Write one record (after the seal of an epoch that has ended); the record written."""
        if us is None:
            us = int(self.clock() * 1_000_000)
        state = self.seal
        if state is not None:
            now = state.epochs.of(us)
            if now > state.epoch:
                self.end_epoch(us, now)
            elif now < state.epoch:  # the clock went back: no key for that epoch any more
                us = state.epochs.begins(state.epoch)
        return self._write(event, fields, us)

    def end_epoch(self, us: int, now: int) -> None:
        """Seal the key's epoch (once; it may have no other record) and evolve the key."""
        state = self.seal
        assert state is not None
        sealed_already = self.last_sealed and self.last_epoch == state.epoch
        lagging = self.last_epoch is not None and self.last_epoch > state.epoch
        if sealed_already and now > state.epoch + 1:
            # The seal is written but the evolved key was not saved (killed in between):
            # that seal names the next epoch as the trail's next, so the next epoch gets a
            # seal of its own, made now, naming where the trail really goes on.
            state.advance(state.epoch + 1)
            sealed_already = False
        if not sealed_already and not lagging:
            # next_epoch: where the trail goes on, under this (soon erased) key. Epochs
            # between are empty only because mfad was not running: root holding a later
            # key cannot claim that for epochs it deleted (auditread's SealCheck).
            fields = {"outcome": Outcome.SUCCESS, "next_epoch": now}
            self._write(Event.AUDIT_SEALED, fields, us)
        state.advance(now)
        self.key_dirty = True

    def _write(self, event: Event, fields: dict[str, Any], us: int) -> dict[str, Any]:
        """The one place a record is made: numbered, chained, sealed, written, handed on."""
        record = {
            "seq": self.seq + 1,
            "time": seal.time_text(us),
            "host": self.host,
            "event": event,
        }
        record.update(fields)
        record["prev"] = self.prev
        state = self.seal
        if state is not None:
            record["epoch"] = state.epoch
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        if state is not None:
            line = seal.with_mac(line, state.key)
            record["mac"] = line[-(seal.MAC_HEX + 2) : -2]
        self._append_line(line)
        if state is not None:
            self.last_epoch, self.last_sealed = state.epoch, event == Event.AUDIT_SEALED
        self.publish(record, line)
        return record

    def _append_line(self, line: str) -> None:
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


class SealingActive(AuditError):
    """seal-init was asked for while sealing is already set up (and not forced)."""


class AuditLog:
    """Append-only, hash-chained (and sealed) audit records; `record` raises AuditError."""

    def __init__(
        self,
        path: Path,
        *,
        host: str = "",
        to_stderr: bool = True,
        required: Callable[[], bool] = lambda: True,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
        on_error: Callable[[AuditError], None] | None = None,
        seal_key: Path | None = None,
        forward: Forwarder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._copy = _StderrCopy() if to_stderr else None
        self._forward = forward
        self._sink = _Sink(path, self._publish, seal_key, clock)
        self._required = required  # read per record, so a reload applies at once
        self._observer = observer  # told of each record written (metrics, notify)
        self._on_error = on_error  # told of each record that could not be
        if host:
            self._sink.host = host  # a fleet tells its hosts apart by it
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._saves_held = False  # seal_init is replacing the key file itself

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
        return self._sink.host

    @property
    def sealing(self) -> seal.Epochs | None:
        """The sealing's epochs if records are being sealed, else None."""
        return self._sink.seal.epochs if self._sink.seal is not None else None

    def subscribe(self) -> asyncio.Queue[str]:
        """A queue that receives every record written from now on, as its JSON line."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, record: dict[str, Any], line: str) -> None:
        """Every record written, as it is written: stderr, journald/syslog, followers."""
        if self._copy is not None:
            self._copy.put(line)
        if self._forward is not None:
            self._forward.send(record, line)
        if self._observer is not None:
            self._observer(str(record.get("event")), record)
        for follower in self._subscribers:
            if not follower.full():  # a stalled follower misses records; the file has them all
                follower.put_nowait(line)

    async def open(self) -> None:
        """Open the log; a log cut or altered since the last run is itself recorded."""
        try:
            notes = self._sink.open()
        except OSError as exc:
            path = self._sink.path
            raise AuditError(f"cannot open the audit log {path}: {exc.strerror}") from exc
        for event, fields in notes:
            await self.record(event, **fields)
        await self.tick()
        self._start_ticker()

    async def reopen(self) -> None:
        """After logrotate moved the file: continue the chain (and the sealing) in a new one."""
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
            self._sink.append(event, clean)
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
        finally:
            self._save_key_soon()

    # --- sealing ---

    async def tick(self) -> None:
        """Seal an epoch that has ended, even if nothing else was recorded in it."""
        sink = self._sink
        if sink.seal is None or sink.fd < 0:
            return
        us = int(sink.clock() * 1_000_000)
        now = sink.seal.epochs.of(us)
        if now > sink.seal.epoch:
            try:
                sink.end_epoch(us, now)
            except AuditError as exc:
                _oplog.error("audit_unwritable", error=str(exc), event_lost=Event.AUDIT_SEALED)
            self._save_key_soon()

    def _start_ticker(self) -> None:
        if self._ticker is None and self._sink.seal is not None:
            self._ticker = asyncio.create_task(self._tick_each_epoch())

    async def _tick_each_epoch(self) -> None:
        while self._sink.seal is not None:
            epochs = self._sink.seal.epochs
            us = int(self._sink.clock() * 1_000_000)
            wait = (epochs.begins(epochs.of(us) + 1) - us) / 1_000_000
            await asyncio.sleep(wait + 0.001)
            await self.tick()

    def _save_key_soon(self) -> None:
        if self._saves_held:
            return
        if self._sink.key_dirty and (self._saver is None or self._saver.done()):
            self._saver = asyncio.create_task(self._save_key())

    async def _save_key(self) -> None:
        """Replace the key file with the evolved key, off the event loop (fsync)."""
        sink = self._sink
        while sink.key_dirty and sink.seal is not None and sink.seal_path is not None:
            sink.key_dirty = False
            state = seal.SealState(sink.seal.epoch, sink.seal.epochs, sink.seal.key)
            try:
                await asyncio.to_thread(seal.store, sink.seal_path, state)
            except OSError as exc:
                sink.key_dirty = True
                _oplog.error(
                    "audit_seal_key_unwritable",
                    path=str(sink.seal_path),
                    error=exc.strerror,
                    reason="the old epoch's key is still on disk; free space or fix the directory",
                )
                return

    async def seal_init(
        self, length: int, *, force: bool = False, **fields: Any
    ) -> seal.VerificationKey:
        """Start sealing now (or anew); the verification key, which is kept nowhere here.
        `fields` (who asked) go into the ``audit_seal_init`` record.

        The old key's last seal and the new sealing's first record are written with no
        await between them, so no other record falls between; the key file is then
        replaced with saves of the evolving key held back, so an older key can never
        be written over the new one.
        """
        sink = self._sink
        if sink.seal_path is None:
            raise AuditError("no audit.seal_key path is configured")
        old = sink.seal
        if old is not None and not force:
            raise SealingActive(
                f"the audit trail is sealed already (since "
                f"{seal.time_text(old.epochs.begins(0))}); --force starts a new sealing, and "
                "only the new verification key verifies the records after it"
            )
        self._saves_held = True
        try:
            if self._saver is not None:
                await asyncio.gather(self._saver, return_exceptions=True)
            await self.tick()
            us = int(sink.clock() * 1_000_000)
            state, vk = seal.start_sealing(us, length)
            if old is not None and not (sink.last_sealed and sink.last_epoch == old.epoch):
                # close the old key's epoch, so its holder sees where its part ends
                sink._write(
                    Event.AUDIT_SEALED, {"outcome": Outcome.SUCCESS, "reason": "rekeyed"}, us
                )
            sink.seal, sink.key_dirty = state, False
            sink.last_epoch, sink.last_sealed = None, False
            init = {
                "outcome": Outcome.SUCCESS,
                **fields,
                "seal_start": seal.time_text(us),
                "epoch_seconds": length,
            }
            sink.append(Event.AUDIT_SEAL_INIT, init, us)
            stored = seal.SealState(state.epoch, state.epochs, state.key)
            await asyncio.to_thread(seal.store, sink.seal_path, stored)
        except (AuditError, OSError) as exc:
            # nobody will hold this sealing's key: stop sealing rather than seal unverifiably
            sink.seal = None
            with contextlib.suppress(OSError):
                await asyncio.to_thread(seal.remove, sink.seal_path)
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise AuditError(
                f"cannot start sealing ({reason}); records are not sealed until "
                "`mfa audit seal-init --force` succeeds"
            ) from exc
        finally:
            self._saves_held = False
        self._save_key_soon()  # an epoch that ended meanwhile
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._start_ticker()
        return vk

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._saver is not None:
            await asyncio.gather(self._saver, return_exceptions=True)
        self._save_key_soon()
        if self._saver is not None:
            await asyncio.gather(self._saver, return_exceptions=True)
        self._sink.close()
        if self._forward is not None:
            self._forward.close()
        if self._copy is not None:
            self._copy.close()


class BoundAudit:
    """An AuditLog with fields of its own in every record (AuditLog.bind)."""

    def __init__(self, log: AuditLog, fields: dict[str, Any]) -> None:
        self._log = log
        self.fields = fields
        self.written: set[Event] = set()  # the events recorded through this writer

    async def record(self, event: Event, **extra: Any) -> None:
        await self._log.record(event, **{**self.fields, **extra})
        self.written.add(event)

    async def record_quietly(self, event: Event, **extra: Any) -> None:
        """For what is already failing: an audit log that cannot be written is logged, not
        raised (the login fails closed either way)."""
        try:
            await self.record(event, **extra)
        except AuditError as exc:
            _oplog.error("audit_unwritable", error=str(exc), event_lost=event, **self.fields)

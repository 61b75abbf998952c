"""The fleet's copy of this host's audit trail, in the store every host shares.

On a shared store (PostgreSQL) every record this host writes also goes to the
store's audit table, so `mfa audit --all-hosts` reads the whole fleet and each
host's chain can be checked there. The host's own file stays the record: a
login never waits for the database, and a database that is down or slow only
delays the copy.

The mirror follows the AuditLog (`subscribe`) and writes what it hears in
batches. Whenever it may have missed records (at start, after the database
failed, when its queue overflowed and the sequence jumped) it catches up from
the file, from the last seq the table holds for this host. A record is in the
table once: (host, seq) is its key, and a record sent twice is kept once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from mfa_wire.events import Event, Outcome
from mfad import auditread, times
from mfad.audit import AuditLog
from mfad.errors import StoreError
from mfad.store import AuditRow, Store

log = structlog.get_logger("mfad.auditmirror")


class AuditMirror:
    BATCH = 500  # records per INSERT
    RETRY_FIRST = 1.0  # seconds before trying a failed database again; doubled each time
    RETRY_MAX = 30.0

    def __init__(self, audit: AuditLog, store: Store) -> None:
        self._audit = audit
        self._store = store
        self._last = 0  # the highest seq known to be in the table
        self._reported = 0  # the highest seq a clash was recorded for

    async def run(self) -> None:
        """Copy records until cancelled; never raises for a database that fails."""
        queue = self._audit.subscribe()  # before catching up: nothing falls in between
        delay, failing = self.RETRY_FIRST, False
        try:
            while True:
                try:
                    await self.catch_up()
                    if failing:
                        log.info("audit_mirror_caught_up", last_seq=self._last)
                    delay, failing = self.RETRY_FIRST, False
                    await self._follow(queue)
                except Exception as exc:  # a bug too must not end the copy
                    if not failing:  # once per outage, not once per retry
                        if isinstance(exc, StoreError):
                            log.warning("audit_mirror_behind", error=str(exc))
                        else:
                            log.exception("audit_mirror_error")
                    failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.RETRY_MAX)
        finally:
            self._audit.unsubscribe(queue)

    async def catch_up(self) -> None:
        """Send what the file holds beyond the table's last record of this host."""
        last = await self._store.audit_last_seq(self._audit.host)
        if last > self._audit.last_seq:
            # records under our name that we never wrote: sending ours from where the
            # table ends would hide them, so send every record the file still has, and
            # let _append name the seqs where the table differs
            await self._alarm(self._audit.last_seq + 1, last)
            last = 0
        self._last = last
        # read a batch at a time (in a thread: files are read there), sent before the
        # next is read: a host's first start on the fleet store may hold a year of records
        rows = _rows_after(self._audit.path, self._last)
        while batch := await asyncio.to_thread(list, itertools.islice(rows, self.BATCH)):
            await self._append(batch)
            self._last = batch[-1].seq

    async def _append(self, rows: list[AuditRow]) -> None:
        """Send `rows`; a record of ours the table holds otherwise is an alarm: another
        writer (a host using our name, someone with the database's credentials) wrote
        in our place. Ours stays in our file; the table keeps what it has (append-only)."""
        clashes = await self._store.audit_append(self._audit.host, rows)
        if clashes:  # the alarm covers every record the table holds beyond, in one go
            top = await self._store.audit_last_seq(self._audit.host)
            await self._alarm(clashes[0], max(clashes[-1], top))

    async def _alarm(self, first: int, last: int) -> None:
        """Record once that the table holds other records under our name in [first, last].
        Once: the alarm is a record too, and it would clash again on its way there."""
        if last <= self._reported:
            return
        first, self._reported = max(first, self._reported + 1), last
        log.error("audit_table_clash", host=self._audit.host, first_seq=first, last_seq=last)
        await self._audit.record(
            Event.AUDIT_TAMPERED,
            outcome=Outcome.ERROR,
            reason="fleet_table_differs",
            first_seq=first,
            last_seq=last,
            message="the fleet's audit table holds records under this host's name that are "
            "not this host's, from first_seq to last_seq (or some of them)",
        )

    async def _follow(self, queue: asyncio.Queue[str]) -> None:
        """Send records as they are written; return when one was missed."""
        while True:
            lines = [await queue.get()]
            while not queue.empty() and len(lines) < self.BATCH:
                lines.append(queue.get_nowait())
            rows: list[AuditRow] = []
            expected = self._last + 1
            for line in lines:
                row = _row(line)
                if row is None or row.seq < expected:
                    continue  # caught up from the file already
                if row.seq > expected:  # the queue overflowed: the file has the rest
                    if rows:
                        await self._append(rows)
                    return
                rows.append(row)
                expected += 1
            if rows:
                await self._append(rows)
                self._last = rows[-1].seq


def _row(line: str) -> AuditRow | None:
    try:
        record: Any = json.loads(line)
        seq, at = record["seq"], times.parse(record["time"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None  # not a record of ours: verify reports it, the table leaves it out
    if type(seq) is not int:
        return None
    user = record.get("user")
    return AuditRow(
        seq, at, str(record.get("event", "")), user if isinstance(user, str) else None, line
    )


def _rows_after(path: Path, last: int) -> Iterator[AuditRow]:
    """The file's records after seq `last`, oldest first; only the files that hold them
    are read (a year of rotated logs is not read again at every start)."""
    for line in auditread.iter_lines(_files_after(path, last)):
        row = _row(line.raw.decode("utf-8", "replace"))
        if row is not None and row.seq > last:
            yield row


def _files_after(path: Path, last: int) -> list[Path]:
    files = auditread.log_files(path)  # oldest first
    needed: list[Path] = []
    for file in reversed(files):
        needed.insert(0, file)
        first = next(_first_seqs(file), None)
        if first is not None and first <= last + 1:
            break
    return needed


def _first_seqs(file: Path) -> Iterator[int]:
    for line in auditread.iter_lines([file]):
        row = _row(line.raw.decode("utf-8", "replace"))
        if row is not None:
            yield row.seq

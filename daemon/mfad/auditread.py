"""Reading the audit trail back: list, filter, verify the chain, summarise.

Pure, synchronous functions over the files that audit.py writes; the daemon
calls them in a worker thread (``asyncio.to_thread``), never on its event loop.

The trail is the live log plus what logrotate left beside it, read oldest
first: ``audit.jsonl.N`` / ``audit.jsonl.N.gz`` from the highest N down, then
``audit.jsonl``. The chain runs through all of them (the first record of a newer
file holds the hash of the last line of the older one), and ``<log>.head`` names
the last record written, so a cut-off end is visible too.

``verify`` walks the chain and names the first record where it breaks:

* ``edited``     a record changed after it was written (the next record's
                 ``prev``, or the head, no longer matches its hash);
* ``deleted``    records are missing (the sequence jumps, the chain does not join);
* ``reordered``  a record stands after one it was written before;
* ``truncated``  the log ends before the record the head names, a record was cut
                 short, or mfad found the log cut at start (``audit_tampered``);
* ``not JSON``   a line that is not a record at all.

A hash chain without a key proves order and completeness against edits by
hand, not against someone who rewrites every later line and the head as well.
With the verification key (seal.py) each record's seal is checked too
(_SealWalk), which names, besides the above:

* ``edited``     a record whose MAC is not its epoch's, or whose epoch is not
                 the one its time falls in (sealed later with a later key);
* ``deleted``    an epoch that ends without its seal record, or a sealed trail
                 whose first record (``audit_seal_init``) is gone;
* ``inserted``   a record after its epoch's seal, or before a record of an
                 earlier epoch;
* ``unsealed``   a record without a seal after sealing started;
* ``rekeyed``    sealing started again with a new key (``seal-init --force``):
                 the rest verifies with that key;
* ``truncated``  a trail that ends epochs before now (mfad seals every epoch).
"""

from __future__ import annotations

import argparse
import gzip
import hmac
import json
import re
import sys
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mfa_wire.events import Event, Outcome
from mfad import seal, times
from mfad.audit import GENESIS, line_hash, read_head

FILTER_FIELDS = ("user", "event", "outcome", "service", "rhost")
"""Record fields a query can match exactly."""


_ROTATED = re.compile(r"\.(\d+)(\.gz)?$")
_RECORD_START = b'{"seq":'
_SHOWN_BYTES = 2000  # of a bad line, in a verdict: enough to recognise it


class LogReadError(Exception):
    """A log file exists but cannot be read (permissions, a broken .gz)."""


@dataclass(frozen=True, slots=True)
class Line:
    file: Path
    number: int  # 1-based, within its file
    raw: bytes  # without the newline
    complete: bool  # ended with a newline; only a file's last line may not


def log_files(path: Path) -> list[Path]:
    """The rotated files beside `path`, oldest first, then `path` itself if it exists."""
    rotated: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            if candidate.name.startswith(path.name + "."):
                match = _ROTATED.fullmatch(candidate.name[len(path.name) :])
                if match and candidate.is_file():
                    rotated.append((int(match.group(1)), candidate))
    files = [p for _, p in sorted(rotated, key=lambda item: (-item[0], item[1].name))]
    if path.is_file():
        files.append(path)
    return files


def iter_lines(files: list[Path]) -> Iterator[Line]:
    """Every non-empty line of `files` in order; raises LogReadError for an unreadable file."""
    for file in files:
        try:
            opener = gzip.open if file.name.endswith(".gz") else open
            with opener(file, "rb") as f:
                for number, raw in enumerate(f, 1):
                    complete = raw.endswith(b"\n")
                    raw = raw.rstrip(b"\n")
                    if raw.strip():
                        yield Line(file, number, raw, complete)
        except (OSError, EOFError, zlib.error) as exc:
            raise LogReadError(f"cannot read {file}: {exc}") from exc


def parse(raw: bytes) -> dict[str, Any] | None:
    """The record on a line, or None if the line is not a JSON object."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _time_of(record: Mapping[str, Any]) -> datetime | None:
    try:
        return times.parse(str(record["time"]))
    except (KeyError, ValueError):
        return None


# --- listing ---


@dataclass(frozen=True, slots=True)
class Filter:
    """Exact matches on record fields, and a time range [since, until)."""

    fields: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        for name, wanted in self.fields.items():
            if record.get(name) != wanted:
                return False
        if self.since is None and self.until is None:
            return True
        moment = _time_of(record)
        if moment is None:
            return False
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


@dataclass(frozen=True, slots=True)
class QueryResult:
    records: list[dict[str, Any]]  # the last `limit` matches, oldest first
    matched: int  # how many records matched in all
    last_seq: int  # the seq of the last record read, matching or not


def query(path: Path, flt: Filter, limit: int | None = None) -> QueryResult:
    """Records of the trail at `path` that match `flt`; the most recent `limit` of them."""
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    matched = last_seq = 0
    for line in iter_lines(log_files(path)):
        record = parse(line.raw)
        if record is None:
            continue  # verify reports it; a listing shows records
        if isinstance(record.get("seq"), int):
            last_seq = record["seq"]
        if flt.matches(record):
            matched += 1
            kept.append(record)
    return QueryResult(list(kept), matched, last_seq)


# --- verification ---


@dataclass(slots=True)
class _Walk:
    """Where the walk through the chain has got to."""

    records: int = 0
    first_seq: int | None = None
    last: Line | None = None
    last_record: dict[str, Any] | None = None


def _bad(
    where: Line | None,
    path: Path,
    seq: int | None,
    reason: str,
    message: str,
    *,
    line: int | None = None,
) -> dict[str, Any]:
    file = where.file if where is not None else path
    raw = where.raw if where is not None else b""
    return {
        "file": str(file),
        "line": line if line is not None else (where.number if where is not None else 1),
        "seq": seq,
        "reason": reason,
        "message": message,
        "record": raw[:_SHOWN_BYTES].decode("utf-8", "replace") or None,
    }


def _chained(raw: bytes) -> dict[str, Any] | None:
    """The record on a line if it has the chain's fields; None if it is not a record."""
    record = parse(raw)
    if record is None or not isinstance(record.get("seq"), int):
        return None
    if not isinstance(record.get("prev"), str):
        return None
    return record


def _unparseable(walk: _Walk, line: Line, path: Path) -> dict[str, Any]:
    expected = walk.last_record["seq"] + 1 if walk.last_record else None
    glued = line.raw.find(_RECORD_START, 1)
    if line.raw.startswith(_RECORD_START):
        how = ""
        if not line.complete:
            how = " (the log ends inside it)"
        elif glued > 0:
            how = " (the next record follows on it)"
        message = f"a record was cut short{how}: the log was truncated mid-line"
        return _bad(line, path, expected, "truncated", message)
    return _bad(line, path, expected, "not JSON", "this line is not an audit record")


def _tampered(walk: _Walk, line: Line, record: dict[str, Any], path: Path) -> dict[str, Any]:
    """mfad found the log cut or altered when it started; its record says where, in its
    `log_seq` (the last record in the log) and `head_seq` (the last one written) fields:
    the sentence in `reason` is for people and may change."""
    log_seq, head_seq = record.get("log_seq"), record.get("head_seq")
    message = f"mfad found the log altered at start: {record.get('reason', '')}"
    if isinstance(log_seq, int) and isinstance(head_seq, int):
        if log_seq < head_seq:
            return _bad(line, path, log_seq + 1, "truncated", message)
        if walk.last is not None:
            return _bad(walk.last, path, log_seq, "edited", message)
    return _bad(line, path, record["seq"], "edited", message)


def _misplaced(
    walk: _Walk, line: Line, record: dict[str, Any], ahead: Iterator[Line], path: Path
) -> dict[str, Any]:
    """The sequence jumps forward here: records were deleted, or moved further down."""
    assert walk.last_record is not None
    expected = walk.last_record["seq"] + 1
    missing = set(range(expected, record["seq"]))
    for later in ahead:
        moved = _chained(later.raw)
        if moved is not None and moved["seq"] in missing:
            return _bad(
                line,
                path,
                expected,
                "reordered",
                f"record {expected} should stand here but is at {later.file.name} "
                f"line {later.number}; records were swapped or moved",
            )
    gap = (
        f"record {expected} is"
        if len(missing) == 1
        else f"records {expected}-{record['seq'] - 1} are"
    )
    return _bad(
        line,
        path,
        expected,
        "deleted",
        f"{gap} missing before record {record['seq']}: deleted from the log",
    )


def _step(
    walk: _Walk, line: Line, record: dict[str, Any], ahead: Iterator[Line], path: Path
) -> dict[str, Any] | None:
    """Check one record against the one before it; a verdict if the chain breaks here."""
    seq, prev = record["seq"], record["prev"]
    before, last = walk.last_record, walk.last
    if before is None or last is None:
        if (seq == 1) != (prev == GENESIS):
            return _bad(
                line,
                path,
                seq,
                "edited",
                "the first record's sequence number or chain start was changed",
            )
        return None  # records before it were rotated away: the chain starts here
    expected = before["seq"] + 1
    if seq == expected and prev == line_hash(last.raw):
        return None
    if seq == expected:
        return _bad(
            last,
            path,
            before["seq"],
            "edited",
            f"record {before['seq']} was changed after it was written: record {seq} "
            "holds a different hash of it",
        )
    if seq == 1 and prev == GENESIS:
        return _bad(
            line,
            path,
            expected,
            "deleted",
            "a new chain starts here: the log and its head file were removed and "
            "mfad started afresh",
        )
    if seq > expected and prev == line_hash(last.raw):
        return _bad(
            line,
            path,
            expected,
            "edited",
            f"record {expected} was changed after it was written: it carries the "
            f"sequence number {seq}",
        )
    if seq > expected:
        return _misplaced(walk, line, record, ahead, path)
    return _bad(
        line,
        path,
        seq,
        "reordered",
        f"record {seq} stands after record {before['seq']}; records were swapped, moved or copied",
    )


# --- the seal (with the verification key) ---


class _SealWalk:
    """Checks each record against the sealing that `vk` started, in trail order.

    Records before the one that started this sealing (``audit_seal_init``, epoch 0)
    are older than it, or sealed with an earlier key: only the chain checks them,
    and the init record's MAC pins that chain as it stood. From the init record
    on, every record must carry the epoch its time falls in and a MAC with that
    epoch's key, epochs never go back, and an epoch ends with its own
    ``audit_sealed`` record before a later epoch's first record.
    """

    def __init__(self, vk: seal.VerificationKey, path: Path) -> None:
        self.vk, self.path = vk, path
        self.keys = seal.KeyChain(vk)
        self.epochs = vk.epochs
        self.started: int | None = None  # seq of the init record
        self.before = 0  # records before it: chain only
        self.sealed = 0
        self.last_epoch: int | None = None
        self.last_seal: dict[str, Any] | None = None  # the last epoch-end record verified
        self.last_was_seal = False
        self.last_line: Line | None = None  # the last record accepted

    def _mac_ok(self, line: Line, epoch: int) -> bool:
        split = seal.split_mac(line.raw)
        if split is None:
            return False
        canonical, tag = split
        return hmac.compare_digest(seal.mac(self.keys.key(epoch), canonical), tag)

    def _bad(self, line: Line, seq: int, reason: str, message: str) -> dict[str, Any]:
        return _bad(line, self.path, seq, reason, message)

    def step(self, line: Line, record: dict[str, Any]) -> dict[str, Any] | None:
        seq, epoch = record["seq"], record.get("epoch")
        moment = _time_of(record)
        sealed = isinstance(epoch, int) and seal.split_mac(line.raw) is not None
        if self.started is None:
            if not sealed or moment is None:
                self.before += 1
                return None
            assert isinstance(epoch, int)
            starts = record.get("event") == Event.AUDIT_SEAL_INIT and epoch == 0
            if starts and self._mac_ok(line, 0) and self.epochs.of(seal.micros(moment)) == 0:
                self.started, self.last_line = seq, line
                self._accept(record, 0)
                return None
            if epoch >= 0 and self._mac_ok(line, epoch):
                return self._bad(
                    line,
                    seq,
                    "deleted",
                    f"record {seq} is sealed with this key, but the record that started the "
                    f"sealing (at {seal.time_text(self.epochs.begins(0))}) is not in the trail: "
                    f"the records before {seq} were deleted (a rotated file removed?)",
                )
            self.before += 1  # sealed with another (earlier) key: the chain checks it
            return None
        if not sealed or moment is None:
            return self._bad(
                line,
                seq,
                "unsealed",
                f"record {seq} carries no seal, but every record after sealing started "
                f"(record {self.started}) must: it was inserted, or its seal stripped",
            )
        assert isinstance(epoch, int) and self.last_epoch is not None
        if record.get("event") == Event.AUDIT_SEAL_INIT:
            if epoch == 0 and self._mac_ok(line, 0):
                return self._bad(
                    line, seq, "inserted", f"record {seq} starts this sealing a second time"
                )
            return self._bad(
                line,
                seq,
                "rekeyed",
                f"sealing was started again at record {seq} with a new key (seal-init "
                f"--force): records up to {seq - 1} verified with this key; verify the rest "
                "with the newer key",
            )
        at = self.epochs.of(seal.micros(moment))
        closes = record.get("event") == Event.AUDIT_SEALED
        if at < epoch or (not closes and at != epoch):
            return self._bad(
                line,
                seq,
                "edited",
                f"record {seq} claims epoch {epoch} but its time falls in epoch {at}: a record "
                "verifies only with the key of its own epoch (sealed later, with a later key?)",
            )
        if epoch < self.last_epoch and self.last_line is not None:
            # mfad never writes an earlier epoch after a later one, and an intruder holds
            # only later keys: the record that claims the later epoch is the one out of place
            return self._bad(
                self.last_line,
                seq - 1,
                "inserted",
                f"record {seq - 1} claims epoch {self.last_epoch}, but record {seq} after it "
                f"is of epoch {epoch}: it was added with a later epoch's key, or moved",
            )
        if epoch > self.last_epoch and not self.last_was_seal:
            return self._bad(
                line,
                seq,
                "deleted",
                f"epoch {self.last_epoch} ends at record {seq - 1} without its seal record: "
                f"records at the end of epoch {self.last_epoch} were deleted before this one",
            )
        if epoch > self.last_epoch and self.last_seal is not None and self.last_was_seal:
            goes_on = self.last_seal.get("next_epoch", self.last_epoch + 1)
            if goes_on != epoch:
                return self._bad(
                    line,
                    seq,
                    "deleted",
                    f"the seal of epoch {self.last_epoch} says the trail goes on in epoch "
                    f"{goes_on}, but record {seq} is of epoch {epoch}: the records of the "
                    "epochs between were deleted",
                )
        if epoch == self.last_epoch and self.last_was_seal:
            return self._bad(
                line,
                seq,
                "inserted",
                f"record {seq} stands after the seal that closed its epoch {epoch}: it was "
                "added later",
            )
        if not self._mac_ok(line, epoch):
            return self._bad(
                line,
                seq,
                "edited",
                f"record {seq} does not match its seal (epoch {epoch}): it, or the record "
                "before it, was changed, removed or inserted after it was written",
            )
        self.last_line = line
        self._accept(record, epoch)
        return None

    def _accept(self, record: dict[str, Any], epoch: int) -> None:
        self.sealed += 1
        self.last_epoch = epoch
        self.last_was_seal = record.get("event") == Event.AUDIT_SEALED
        if self.last_was_seal:
            self.last_seal = record

    def end(self, walk: _Walk, now_us: int | None) -> dict[str, Any] | None:
        """What the end of the trail says: never started, or cut short."""
        if self.started is None:
            return _bad(
                walk.last,
                self.path,
                None,
                "deleted",
                "no record is sealed with this key: the record that started the sealing "
                f"(at {seal.time_text(self.epochs.begins(0))}) and every record since are "
                "missing, or this is not this trail's verification key",
            )
        if now_us is None or self.last_epoch is None or walk.last_record is None:
            return None
        now = self.epochs.of(now_us)
        last = walk.last_record
        if now - self.last_epoch > 1 and last.get("event") != Event.DAEMON_STOP:
            return _bad(
                walk.last,
                self.path,
                last["seq"] + 1,
                "truncated",
                f"the trail ends at record {last['seq']}, in epoch {self.last_epoch}, but it is "
                f"epoch {now} now and mfad seals every epoch while it runs: the records after "
                f"{last['seq']} were deleted (or mfad was killed then and not started since)",
            )
        return None

    def summary(self) -> dict[str, Any]:
        last = self.last_seal
        return {
            "started_seq": self.started,
            "unsealed_before": self.before,
            "sealed_records": self.sealed,
            "epoch_seconds": self.epochs.length,
            "last_epoch": self.last_epoch,
            "last_sealed_epoch": last.get("epoch") if last else None,
            "last_sealed_until": (
                seal.time_text(self.epochs.begins(last["epoch"] + 1)) if last else None
            ),
        }


def verify(
    path: Path, key: seal.VerificationKey | None = None, now_us: int | None = None
) -> dict[str, Any]:
    """Walk the whole trail at `path`; the verdict names the first bad record, if any.

    With `key` each record's seal is checked too (_SealWalk), and with `now_us`
    (the time now) a trail that stops epochs before now is called truncated.

    Returns ``intact``, ``records``, ``files``, ``first_seq``, ``last_seq``,
    ``head`` (``{"seq", "matches"}`` or None), ``checked`` (``chain`` or
    ``chain+seal``), ``sealing`` (None, or _SealWalk.summary: where the sealing
    started, the last epoch verified and the last one closed by its seal) and
    ``first_bad`` (None, or ``file``, ``line``, ``seq``, ``reason``, ``message``,
    ``record``: the line as found, for a person to look at).
    """
    # The head first: mfad rewrites it after each record, so every record it
    # names is already in the file, however many are appended while we read.
    head = read_head(path)
    files = log_files(path)
    walk = _Walk()
    head_matches: bool | None = None
    sealing = _SealWalk(key, path) if key is not None else None

    def verdict(first_bad: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "intact": first_bad is None,
            "checked": "chain" if sealing is None else "chain+seal",
            "sealing": sealing.summary() if sealing is not None else None,
            "records": walk.records,
            "files": [str(f) for f in files],
            "first_seq": walk.first_seq,
            "last_seq": walk.last_record["seq"] if walk.last_record else None,
            "head": None if head is None else {"seq": head[0], "matches": head_matches},
            "first_bad": first_bad,
        }

    lines = iter_lines(files)
    unlike_head: Line | None = None  # the head's record, if its hash differs
    try:
        for line in lines:
            record = _chained(line.raw)
            if record is None:
                return verdict(_unparseable(walk, line, path))
            if sealing is not None:
                unsealed = sealing.step(line, record)
                if unsealed is not None:
                    return verdict(unsealed)
            broken = _step(walk, line, record, lines, path)
            if broken is not None:
                return verdict(broken)
            if record.get("event") == Event.AUDIT_TAMPERED:
                return verdict(_tampered(walk, line, record, path))
            if head is not None and record["seq"] == head[0]:
                # Reported only if the chain holds to the end: an edit anywhere else
                # is seen by the next record first, and comes first in the log.
                head_matches = line_hash(line.raw) == head[1]
                unlike_head = None if head_matches else line
            if walk.first_seq is None:
                walk.first_seq = record["seq"]
            walk.records += 1
            walk.last, walk.last_record = line, record
    except LogReadError as exc:
        return verdict(_bad(None, path, None, "not JSON", str(exc)))
    if unlike_head is not None and head is not None:
        return verdict(
            _bad(
                unlike_head,
                path,
                head[0],
                "edited",
                f"record {head[0]} was changed after it was written: "
                "the head file holds a different hash of it",
            )
        )
    if head is not None and head_matches is None:
        last_seq = walk.last_record["seq"] if walk.last_record else 0
        if last_seq < head[0]:
            end = walk.last.number + 1 if walk.last is not None and walk.last.file == path else 1
            head_matches = False
            return verdict(
                _bad(
                    None,
                    path,
                    last_seq + 1,
                    "truncated",
                    f"the log was cut: it ends before record {last_seq + 1}, but "
                    f"the head file says record {head[0]} was written",
                    line=end,
                )
            )
    if sealing is not None:
        return verdict(sealing.end(walk, now_us))
    return verdict(None)


# --- summary ---


@dataclass(slots=True)
class ChainCheck:
    """One host's chain as the fleet's table holds it, fed record by record in seq order
    (``mfa audit verify --all-hosts``). The table may start after the host's first
    record (its trail began before the fleet); from there every record must follow."""

    host: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    _last_line: bytes = b""
    first_bad: dict[str, Any] | None = None

    def add(self, seq: int, line: str) -> bool:
        """Take the next record; False (and first_bad set) if the chain breaks there."""
        raw = line.encode("utf-8")
        record = parse(raw)
        # (a record's own host field may be an older name of the host: the trail is the
        # host's file, whatever it was called when the record was written)
        if record is None or record.get("seq") != seq:
            return self._bad(seq, "not JSON", f"not a record with seq {seq}")
        if self.last_seq is not None:
            if seq != self.last_seq + 1:
                missing = f"{self.last_seq + 1}-{seq - 1}"
                return self._bad(seq, "deleted", f"records {missing} are missing")
            if record.get("prev") != line_hash(self._last_line):
                return self._bad(seq, "edited", f"record {self.last_seq} was changed")
        if self.first_seq is None:
            self.first_seq = seq
        self.records += 1
        self.last_seq, self._last_line = seq, raw
        return True

    def _bad(self, seq: int, reason: str, message: str) -> bool:
        self.first_bad = {"seq": seq, "reason": reason, "message": message}
        return False

    def verdict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_bad": self.first_bad,
        }


def _by(counter: Counter[str], key: str) -> list[dict[str, Any]]:
    return [{key: name, "count": n} for name, n in counter.most_common()]


def summarise(
    path: Path, since: datetime | None, now: datetime, accounts: Mapping[str, str]
) -> dict[str, Any]:
    """What a reviewer looks at first, from the records since `since`.

    `accounts` maps each user the store knows to its state now (``active``,
    ``disabled``, ``pending``, and whatever else the store has, such as
    ``exempt`` or ``suspended``): for the users who never completed an
    enrolment, and for the exemptions and suspensions in force.
    """
    flt = Filter(since=since)
    records = (parse(line.raw) for line in iter_lines(log_files(path)))
    return summarise_records(
        (r for r in records if r is not None and flt.matches(r)), since, now, accounts
    )


def summarise_records(
    found: Iterable[Mapping[str, Any]],
    since: datetime | None,
    now: datetime,
    accounts: Mapping[str, str],
) -> dict[str, Any]:
    """summarise, over records already read and chosen (the fleet's, from its table)."""
    logins: Counter[str] = Counter()
    fail_user: Counter[str] = Counter()
    fail_rhost: Counter[str] = Counter()
    fail_reason: Counter[str] = Counter()
    wrong_user: Counter[str] = Counter()
    wrong_rhost: Counter[str] = Counter()
    skipped: Counter[tuple[str, str]] = Counter()
    refused: Counter[tuple[str, str]] = Counter()
    not_enrolled: Counter[str] = Counter()
    last_lock: dict[str, Mapping[str, Any]] = {}
    locks: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    control: list[dict[str, Any]] = []
    tampered: list[dict[str, Any]] = []
    records = 0
    for record in found:
        records += 1
        event, outcome = record.get("event"), record.get("outcome")
        user, rhost = str(record.get("user", "")), str(record.get("rhost") or "(local)")
        reason = str(record.get("reason", ""))
        if event == Event.LOGIN:
            logins[str(outcome)] += 1
            if outcome == Outcome.FAILURE:
                fail_user[user] += 1
                fail_rhost[rhost] += 1
                fail_reason[reason] += 1
                if reason == "not_enrolled":
                    not_enrolled[user] += 1
            elif outcome == Outcome.SKIPPED:
                skipped[(user, reason)] += 1
        elif event == Event.ATTEMPT and outcome == Outcome.FAILURE:
            wrong_user[user] += 1
            wrong_rhost[rhost] += 1
        elif event in (Event.LOCK_SET, Event.LOCK_CLEARED):
            last_lock[user] = record
            if event == Event.LOCK_SET:
                locks.append(_pick(record, "time", "user", "rhost", "until", "failures"))
        elif event == Event.SOURCE_BLOCKED:
            blocks.append(_pick(record, "time", "user", "rhost", "until"))
        elif event == Event.CONTROL and outcome == Outcome.SUCCESS:
            control.append(_pick(record, "time", "actor", "op", "user"))
        elif event == Event.CONTROL:
            refused[(str(record.get("actor", "")), str(record.get("op", "")))] += 1
        elif event == Event.AUDIT_TAMPERED:
            tampered.append(_pick(record, "time", "seq", "reason"))
    summary = {
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "records": records,
        "logins": dict(logins),
        "failures_by_user": [
            {"user": u, "failures": fail_user[u], "wrong_codes": wrong_user[u]}
            for u in _ranked(fail_user, wrong_user)
        ],
        "failures_by_rhost": [
            {"rhost": h, "failures": fail_rhost[h], "wrong_codes": wrong_rhost[h]}
            for h in _ranked(fail_rhost, wrong_rhost)
        ],
        "failure_reasons": _by(fail_reason, "reason"),
        "skipped": [{"user": u, "reason": r, "count": n} for (u, r), n in skipped.most_common()],
        "locks": locks,
        "locked_now": sorted(u for u, r in last_lock.items() if _in_force(r, now)),
        "source_blocks": blocks,
        "control": control,
        "refused": [{"actor": a, "op": o, "count": n} for (a, o), n in refused.most_common()],
        "never_enrolled": _never_enrolled(accounts, not_enrolled),
        "exempt_now": sorted(u for u, state in accounts.items() if state == "exempt"),
        "suspended_now": sorted(u for u, state in accounts.items() if state == "suspended"),
        "tampered": tampered,
    }
    return _capped(summary)


SUMMARY_TOP = 25
"""Entries kept per list: a password spray must not make the answer too big for a frame."""


def _capped(summary: dict[str, Any]) -> dict[str, Any]:
    """Each list cut to its first SUMMARY_TOP entries (they are ranked), with the totals."""
    cut = {}
    for key, value in summary.items():
        if isinstance(value, list) and len(value) > SUMMARY_TOP:
            cut[key] = len(value)
            summary[key] = value[:SUMMARY_TOP]
    summary["truncated"] = cut
    return summary


def _pick(record: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {n: record[n] for n in names if n in record}


def _ranked(*counters: Counter[str]) -> list[str]:
    """Names by their counts, most first, then by name."""
    names = set().union(*counters)
    return sorted(names, key=lambda n: (tuple(-c[n] for c in counters), n))


def _in_force(record: Mapping[str, Any], now: datetime) -> bool:
    if record.get("event") != Event.LOCK_SET:
        return False
    until = record.get("until")
    if until is None:
        return True  # until an administrator unlocks
    try:
        return times.parse(str(until)) > now
    except ValueError:
        return True


def _never_enrolled(accounts: Mapping[str, str], denied: Counter[str]) -> list[dict[str, Any]]:
    """Users the store holds only a pending enrolment for, or refused as not enrolled."""
    names = {u for u, state in accounts.items() if state == "pending"}
    names |= {u for u in denied if accounts.get(u) not in ("active", "disabled")}
    return [
        {"user": u, "pending": accounts.get(u) == "pending", "refused_logins": denied[u]}
        for u in sorted(names)
    ]


# --- verifying a copy, on a machine of the security team's ---


def main(argv: list[str] | None = None) -> int:
    """``python3 -m mfad.auditread [--key-file F] [--at TIME] LOG``: verify a copy of the
    trail (LOG and the rotated files beside it) without a daemon; exit 7 if broken."""
    parser = argparse.ArgumentParser(
        prog="python3 -m mfad.auditread",
        description="Verify a copy of an mfad audit trail (LOG and its rotated files).",
    )
    parser.add_argument("log", type=Path, metavar="LOG")
    parser.add_argument(
        "--key-file", metavar="F", help="the verification key, in a file (- reads stdin)"
    )
    parser.add_argument(
        "--at",
        metavar="TIME",
        help="RFC 3339 time the copy was taken: the trail must reach that epoch",
    )
    args = parser.parse_args(argv)
    key = None
    if args.key_file is not None:
        text = sys.stdin.read() if args.key_file == "-" else Path(args.key_file).read_text()
        try:
            key = seal.VerificationKey.parse(text)
        except seal.SealError as exc:
            parser.error(f"not a verification key: {exc}")
    now_us = seal.micros(times.parse(args.at)) if args.at else None
    verdict = verify(args.log, key, now_us)
    print(json.dumps(verdict, indent=2, ensure_ascii=False))
    return 0 if verdict["intact"] else 7


if __name__ == "__main__":
    sys.exit(main())

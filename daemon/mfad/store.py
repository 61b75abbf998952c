"""Per-user state behind one interface; SQLite is the embedded default.

Every method is a coroutine, so a PostgreSQL backend (many hosts sharing users,
replay state and lockouts) can implement the same interface. The SQLite backend
runs a login's short statements on the event loop and everything that may wait
(a lock, a checkpoint, a scan) on one store thread; its class docstring says why
the loop never waits on the disk.

Replay protection lives here as one conditional UPDATE (``consume_step``): the
database, not the caller, decides atomically whether a time step is still
unused, so two parallel logins with one code give exactly one success — on
PostgreSQL across hosts too.

Secrets arrive sealed (see secretbox.py); this module never sees plaintext.
The values it stores and returns are model.py's.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mfad.errors import StoreError
from mfad.model import (
    Account,
    Address,
    CodePurpose,
    Counter,
    GuardState,
    Kind,
    Login,
    PendingEnrolment,
    Site,
    SourceBlock,
    State,
    StateChange,
    TokenParams,
)

T = TypeVar("T")


class Store(abc.ABC):
    """What the daemon needs from storage; nothing else touches the tables."""

    @abc.abstractmethod
    async def get_account(self, user: str) -> Account | None: ...

    @abc.abstractmethod
    async def begin_enrolment(self, pending: PendingEnrolment) -> None:
        """Keep a new secret aside until a code confirms it; replaces an older pending one."""

    @abc.abstractmethod
    async def get_pending(self, user: str) -> PendingEnrolment | None:
        """The secret held aside for `user`, expired or not (the caller judges both)."""

    @abc.abstractmethod
    async def activate(
        self,
        pending: PendingEnrolment,
        step: int | None,
        now: float,
        recovery: Sequence[bytes] = (),
        rhost: str | None = None,
    ) -> None:
        """Make a confirmed secret the user's token with fresh recovery codes (as digests);
        its confirming step counts as used, and the confirmation, a correct code from
        `rhost` (None: not known), is the account's last verification. The token's kind
        (TOTP or HOTP) comes with its parameters; `step` None (an imported or hardware
        token) marks nothing used and nothing verified yet."""

    @abc.abstractmethod
    async def consume_step(
        self, user: str, step: int, offset: int, now: float, login: Site | None
    ) -> bool:
        """Atomically mark `step` used; False if it (or a later step) was used already.

        `step` is a TOTP time step or an HOTP counter (the account's kind says which;
        the rule is the same). With `login`, the use is a login and goes into the history
        under the token's kind; without, it only proves the token (e.g. to regenerate
        recovery codes, or an HOTP resync) and is not a login."""

    @abc.abstractmethod
    async def set_state(self, user: str, change: StateChange, now: float) -> None:
        """Move `user` to a new lifecycle state (creating the row); erase the token if asked."""

    @abc.abstractmethod
    async def replace_recovery_codes(
        self, user: str, digests: Sequence[bytes], now: float
    ) -> None: ...

    @abc.abstractmethod
    async def use_recovery_code(
        self, user: str, digest: bytes, now: float, login: Site | None
    ) -> int | None:
        """Atomically spend one code of an active user; the number left, or None if no match.

        With `login` the use goes into the history, as for consume_step."""

    @abc.abstractmethod
    async def spellings(self, user: str) -> list[str]:
        """Names of accounts or pending enrolments equal to `user` but for (ASCII) case,
        `user` itself included if it has one: rows written under another spelling."""

    @abc.abstractmethod
    async def bind_uid(self, user: str, uid: int) -> None:
        """Record the owner's uid on an account (and pending enrolment) that has none yet."""

    @abc.abstractmethod
    async def forget(self, user: str) -> bool:
        """Remove every row of `user`: account, enrolment, codes, counters, history.

        False if there was nothing. For an account whose owner was deleted or
        re-created with another uid; the audit trail keeps what happened."""

    @abc.abstractmethod
    async def get_address(self, user: str) -> Address | None:
        """Where `user`'s email codes go, confirmed or not; None if no address is set."""

    @abc.abstractmethod
    async def addresses(self) -> dict[str, Address]:
        """Every user's address, by user (for `mfa list`)."""

    @abc.abstractmethod
    async def set_address(self, address: Address, now: float) -> None:
        """Set (or replace) a user's address; any code mailed to the old one is void."""

    @abc.abstractmethod
    async def confirm_address(self, user: str, address: str, now: float) -> bool:
        """Mark `address` confirmed; False if the user's address is no longer that one."""

    @abc.abstractmethod
    async def put_email_code(
        self,
        user: str,
        digest: bytes,
        purpose: CodePurpose,
        expires_at: float,
        now: float,
        interval: float,
    ) -> bool:
        """Keep `digest` as the user's one outstanding mailed code, replacing any other,
        unless a code was mailed to them less than `interval` seconds ago: then False, and
        nothing changes. Atomic: of two parallel logins, one mails."""

    @abc.abstractmethod
    async def take_email_code(
        self, user: str, digest: bytes, purpose: CodePurpose, now: float, login: Site | None
    ) -> bool:
        """Spend the outstanding code if it is `digest`, for `purpose`, and not expired:
        once, atomically. A login (`login` given) is kept in the history as method
        ``email`` or, for a recovery code, ``email_recovery``."""

    @abc.abstractmethod
    async def void_email_code(self, user: str, digest: bytes) -> None:
        """Drop the outstanding code `digest` that was never delivered: the resend interval
        starts again from the last code that was."""

    @abc.abstractmethod
    async def email_code_sent_at(self, user: str) -> float | None:
        """When the last code was mailed to `user` (spent or not), if one was."""

    @abc.abstractmethod
    async def activate_email(self, user: str, uid: int | None, now: float) -> None:
        """Make `user` active on the email method: no token (any is erased), no deadline."""

    @abc.abstractmethod
    async def get_key_check(self) -> bytes | None:
        """The check value of the key the secrets are sealed with (secretbox), if recorded."""

    @abc.abstractmethod
    async def set_key_check(self, value: bytes) -> None: ...

    @abc.abstractmethod
    async def any_sealed_secret(self) -> tuple[str, bytes] | None:
        """One (user, sealed secret) pair, to test the key on a store from before key checks."""

    @abc.abstractmethod
    async def recovery_codes_left(self, user: str) -> int: ...

    @abc.abstractmethod
    async def accounts(self) -> list[tuple[Account, Counter]]:
        """Every account row with its account-wide failure counter, by user name."""

    @abc.abstractmethod
    async def history(self, user: str, limit: int) -> list[Login]:
        """Successful second-factor logins, newest first."""

    @abc.abstractmethod
    async def get_guard(self, user: str, source: str) -> GuardState: ...

    @abc.abstractmethod
    async def put_guard(self, user: str, source: str, state: GuardState) -> None:
        """Replace both counters (a success clears them); counting uses update_guard."""

    @abc.abstractmethod
    async def update_guard(
        self, user: str, source: str, change: Callable[[GuardState], GuardState]
    ) -> GuardState:
        """Read both counters, apply `change`, write and return the result, as one atomic
        step of the database: no other daemon's update of these counters (on a shared
        store) comes between the read and the write, so no wrong code goes uncounted.
        lockout.Guard's per-user lock covers one daemon only. `change` must be pure: it
        may run again when the database asks for a retry."""

    @abc.abstractmethod
    async def source_blocks(self, now: float, user: str | None = None) -> list[SourceBlock]:
        """The per-source blocks in force at `now` (of `user`, or of everyone), by user and
        source: what `mfa status` and `mfa list` show and `mfa unlock` lifts."""

    @abc.abstractmethod
    async def clear_guard(self, user: str) -> bool:
        """Forget every counter, lock and block of `user`; False if there were none."""

    @abc.abstractmethod
    async def list_accounts(self) -> dict[str, str]:
        """Every user the store knows, with their state; `pending` also for a user with only
        an enrolment held aside (never confirmed)."""

    @abc.abstractmethod
    async def is_empty(self) -> bool:
        """True if the store holds no row of any of COPIED_TABLES (its key check aside)."""

    @abc.abstractmethod
    async def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of COPIED_TABLES, columns in the order named there; a lock "until
        unlocked" as math.inf. One consistent snapshot (`mfad migrate-store`)."""

    @abc.abstractmethod
    async def import_rows(self, rows: dict[str, list[tuple[Any, ...]]], *, replace: bool) -> None:
        """Write what export_rows returned, in one transaction; with `replace`, every row
        of COPIED_TABLES already here goes first. StoreError, and nothing written, if
        the store is not empty and `replace` is false."""

    # The fleet's audit table: only a store the hosts share has one (PostgreSQL).
    shared = False
    """True if other hosts' daemons use this store too (the fleet audit table is here)."""

    async def audit_append(self, host: str, records: Sequence[AuditRow]) -> list[int]:
        """Add records of `host`'s trail to the fleet's table; a (host, seq) already
        there is left as it is, so a catch-up may send a record twice. Returns the seqs
        at which the table already held a *different* record: someone else wrote there."""
        raise StoreError(FLEET_ONLY)

    async def audit_last_seq(self, host: str) -> int:
        """The highest seq of `host` in the fleet's table; 0 if none."""
        raise StoreError(FLEET_ONLY)

    async def audit_lines(
        self, since: float | None, until: float | None, fields: Mapping[str, str]
    ) -> AsyncIterator[str]:
        """Every host's records in [since, until) whose `fields` match exactly, as their
        JSON lines, oldest first (by time, then host and seq)."""
        raise StoreError(FLEET_ONLY)
        yield ""  # pragma: no cover (makes this an async generator, as the overrides are)

    async def audit_chain(self, host: str) -> AsyncIterator[tuple[int, str]]:
        """`host`'s records in the fleet's table as (seq, line), by seq."""
        raise StoreError(FLEET_ONLY)
        yield (0, "")  # pragma: no cover

    async def audit_hosts(self) -> list[str]:
        """The hosts with records in the fleet's table, by name."""
        raise StoreError(FLEET_ONLY)

    @abc.abstractmethod
    async def close(self) -> None: ...


FLEET_ONLY = "the fleet audit table needs store.backend: postgresql (hosts sharing one store)"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One record of a host's audit trail, as the fleet's table keeps it."""

    seq: int
    at: float  # the record's time, as seconds since the epoch
    event: str
    user: str | None
    line: str  # the record exactly as written to the host's file (its hash is in the chain)


# What `mfad migrate-store` copies, table by table, and the columns it copies: every
# row of the daemon's state (not the logins' ids: the target numbers its own). A
# column added by a migration must be added here too, or it is not carried over.
COPIED_TABLES: dict[str, tuple[str, ...]] = {
    "accounts": (
        "user",
        "state",
        "secret",
        "algorithm",
        "digits",
        "period",
        "enrolled_at",
        "last_step",
        "last_verified_at",
        "last_rhost",
        "clock_offset",
        "updated_at",
        "deadline",
        "exempt_reason",
        "exempt_until",
        "state_changed_at",
        "uid",
        "kind",
    ),
    "enrolments": (
        "user",
        "secret",
        "algorithm",
        "digits",
        "period",
        "created_at",
        "uid",
        "expires_at",
        "origin",
    ),
    "recovery_codes": ("user", "digest", "created_at"),
    "logins": ("user", "at", "service", "rhost", "method"),
    "guard": ("user", "source", "failures", "first_at", "until", "total"),
    "meta": ("key", "value"),
    "addresses": ("user", "address", "confirmed_at", "uid", "updated_at"),
    "email_codes": ("user", "digest", "purpose", "expires_at", "sent_at"),
}


_MIGRATIONS: list[str] = [
    # 1: accounts with their lifecycle, pending enrolments, recovery codes, the history
    # of second-factor logins, and the lockout counters. Later versions append here.
    """
    CREATE TABLE accounts (
        user TEXT PRIMARY KEY,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'active', 'suspended', 'disabled', 'exempt')),
        secret BLOB,
        algorithm TEXT NOT NULL DEFAULT 'SHA1',
        digits INTEGER NOT NULL DEFAULT 6,
        period INTEGER NOT NULL DEFAULT 30,
        enrolled_at REAL,
        last_step INTEGER,
        last_verified_at REAL,
        last_rhost TEXT,
        clock_offset INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        deadline REAL,
        exempt_reason TEXT,
        exempt_until REAL,
        state_changed_at REAL
    );
    CREATE TABLE enrolments (
        user TEXT PRIMARY KEY,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE recovery_codes (
        user TEXT NOT NULL,
        digest BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (user, digest)
    );
    CREATE TABLE logins (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        at REAL NOT NULL,
        service TEXT NOT NULL,
        rhost TEXT NOT NULL,
        method TEXT NOT NULL
    );
    CREATE INDEX logins_user_at ON logins (user, at);
    -- any user name, enrolled or not, so that unknown names behave exactly like real
    -- ones. source '*' is the account as a whole. until 1e308 means until unlocked.
    CREATE TABLE guard (
        user TEXT NOT NULL,
        source TEXT NOT NULL,
        failures INTEGER NOT NULL,
        first_at REAL NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (user, source)
    );
    """,
    # 2: accounts and pending enrolments belong to a uid; pending secrets expire; the guard
    # counts wrong codes across automatic unlocks (the lifetime cap); a key check value.
    """
    ALTER TABLE accounts ADD COLUMN uid INTEGER;
    ALTER TABLE enrolments ADD COLUMN uid INTEGER;
    ALTER TABLE enrolments ADD COLUMN expires_at REAL;
    ALTER TABLE enrolments ADD COLUMN origin TEXT;
    ALTER TABLE guard ADD COLUMN total INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE INDEX accounts_user_lower ON accounts (lower(user));
    CREATE INDEX enrolments_user_lower ON enrolments (lower(user))
    """,
    # 3: a token is TOTP or HOTP (RFC 4226); an HOTP token's last used counter is last_step.
    """
    ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'totp'
        CHECK (kind IN ('totp', 'hotp'))
    """,
    # 4: the email method (kind 'email': SQLite cannot change a CHECK, so the column is
    # made again), users' addresses, and the one outstanding mailed code per user (its
    # keyed digest; digest NULL once spent, sent_at kept for the resend interval).
    """
    ALTER TABLE accounts ADD COLUMN method TEXT NOT NULL DEFAULT 'totp'
        CHECK (method IN ('totp', 'hotp', 'email'));
    UPDATE accounts SET method = kind;
    ALTER TABLE accounts DROP COLUMN kind;
    ALTER TABLE accounts RENAME COLUMN method TO kind;
    CREATE TABLE addresses (
        user TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        confirmed_at REAL,
        uid INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE TABLE email_codes (
        user TEXT PRIMARY KEY,
        digest BLOB,
        purpose TEXT NOT NULL CHECK (purpose IN ('login', 'confirm', 'recovery')),
        expires_at REAL NOT NULL,
        sent_at REAL NOT NULL
    )
    """,
]
ACCOUNT_SOURCE = "*"
USER_TABLES = (
    "accounts",
    "enrolments",
    "recovery_codes",
    "guard",
    "logins",
    "addresses",
    "email_codes",
)
_ACCOUNT_COLUMNS = (
    "accounts.user, state, secret, algorithm, digits, period, enrolled_at, last_step,"
    " last_verified_at, last_rhost, clock_offset, deadline, exempt_reason, exempt_until,"
    " state_changed_at, uid, kind"
)


def account_from_row(row: Sequence[Any]) -> Account:
    """An account row (the columns of _ACCOUNT_COLUMNS, in order) as the model's Account;
    for every backend."""
    secret = None if row[2] is None else bytes(row[2])
    params = TokenParams(row[3], row[4], row[5], Kind(row[16]))
    return Account(row[0], State(row[1]), secret, params, *row[6:16])


def _replace_codes(db: sqlite3.Connection, user: str, digests: Sequence[bytes], now: float) -> None:
    db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
    db.executemany("INSERT INTO recovery_codes VALUES (?, ?, ?)", [(user, d, now) for d in digests])


_FOREVER = 1e308


def enrolment_values(p: PendingEnrolment) -> tuple[Any, ...]:
    """An enrolment's columns, in the order both backends' INSERTs name them."""
    return (
        p.user,
        p.sealed_secret,
        p.params.algorithm,
        p.params.digits,
        p.params.period,
        p.created_at,
        p.uid,
        p.expires_at,
        p.origin,
    )


def activation_values(
    p: PendingEnrolment, step: int | None, now: float, rhost: str | None
) -> tuple[Any, ...]:
    """An activated account's columns, in the order both backends' INSERTs name them: the
    confirming code is the last verification, at `now` from `rhost`; a token activated
    with no code (`step` None: imported, or a hardware token's key) has none yet."""
    confirmed = step is not None
    return (
        p.user,
        p.sealed_secret,
        p.params.algorithm,
        p.params.digits,
        p.params.period,
        now,
        step,
        now,
        now,
        p.uid,
        str(p.params.kind),
        now if confirmed else None,
        rhost if confirmed else None,
    )


def counter_from_row(row: Sequence[Any]) -> Counter:
    """A guard row (failures, first_at, until, total) as a Counter; NULLs (no row) are zero.
    For every backend: "until unlocked" is 1e308 in SQLite and 'Infinity' in PostgreSQL."""
    failures, first_at, until, total = row
    if until is not None and until >= _FOREVER:
        until = math.inf
    return Counter(failures or 0, first_at or 0.0, until or 0.0, total or 0)


SCHEMA_VERSION = len(_MIGRATIONS)

NOT_EMPTY = (
    "{where} already holds accounts or counters; migrate-store replaces them only when "
    "told to (--replace)"
)


def portable_row(table: str, row: Sequence[Any]) -> tuple[Any, ...]:
    """A row of COPIED_TABLES as any backend can write it: bytes as bytes, a guard's
    "until unlocked" as math.inf (each backend stores that its own way)."""
    values = [bytes(v) if isinstance(v, memoryview) else v for v in row]
    if table == "guard":
        values[4] = counter_from_row((0, 0.0, values[4], 0)).until
    return tuple(values)


def _sqlite_row(table: str, row: Sequence[Any]) -> tuple[Any, ...]:
    if table != "guard":
        return tuple(row)
    return (*row[:4], min(row[4], _FOREVER), *row[5:])


def _rows_in(db: sqlite3.Connection, table: str) -> bool:
    return db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None  # noqa: S608


def _read_guard(db: sqlite3.Connection, user: str, source: str) -> GuardState:
    rows = db.execute(
        "SELECT source, failures, first_at, until, total FROM guard"
        " WHERE user = ? AND source IN (?, ?)",
        (user, ACCOUNT_SOURCE, source),
    ).fetchall()
    found = {r[0]: counter_from_row(r[1:]) for r in rows}
    return GuardState(found.get(ACCOUNT_SOURCE, Counter()), found.get(source, Counter()))


def _write_guard(db: sqlite3.Connection, user: str, source: str, state: GuardState) -> None:
    for key, counter in ((ACCOUNT_SOURCE, state.account), (source, state.source)):
        if counter == Counter():
            db.execute("DELETE FROM guard WHERE user = ? AND source = ?", (user, key))
        else:
            db.execute(
                "INSERT OR REPLACE INTO guard (user, source, failures, first_at,"
                " until, total) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user,
                    key,
                    counter.failures,
                    counter.first_at,
                    min(counter.until, _FOREVER),
                    counter.total,
                ),
            )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so a read-then-write cannot race."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore(Store):
    """One SQLite file in WAL mode, with two connections.

    Logins use the *loop* connection, on the event loop itself: each login's
    statements are primary-key lookups and one-row writes that take 5 to 30 µs,
    less than a trip to a worker thread and back (two GIL hand-offs, measured in
    bench/RESULTS.md as most of a login's cost). What can take longer never runs
    there, so it never stalls other logins:

    - no fsync: ``synchronous=NORMAL`` in WAL mode commits to the page cache;
    - no checkpoint (the one step that fsyncs): ``wal_autocheckpoint=0`` here,
      and the *worker* connection checkpoints on the store thread, every
      ``CHECKPOINT_EVERY`` seconds or after ``CHECKPOINT_AFTER`` rows changed;
    - no waiting for a lock: ``busy_timeout=0`` here, and a statement that finds
      the database locked (a backup, an admin's sqlite3 shell) is run again on
      the store thread, which may wait up to 5 s;
    - no scan: listing every account runs on the store thread.
    """

    CHECKPOINT_EVERY = 1.0  # seconds
    CHECKPOINT_AFTER = 1000  # rows changed through the loop connection

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfad-store")
        self._db: sqlite3.Connection | None = None  # the loop's
        self._worker_db: sqlite3.Connection | None = None  # the store thread's
        self._changes_checkpointed = 0  # the loop connection's total_changes at the last one
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_due = asyncio.Event()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        loop = asyncio.get_running_loop()
        try:
            store._worker_db = await loop.run_in_executor(store._executor, store._open_worker)
            store._db = store._connect(busy_timeout_ms=0)
            store._db.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            await store.close()
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store._checkpointer = asyncio.create_task(store._checkpoints())
        return store

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # NORMAL in WAL mode survives a killed daemon; only a power cut can lose the
        # last commits, which for replay state means at most one time step's codes.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        return db

    def _open_worker(self) -> sqlite3.Connection:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = self._connect(busy_timeout_ms=5000)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
            self._path.chmod(0o600)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {version}, newer than this mfad "
                f"understands ({SCHEMA_VERSION}); upgrade pam-mfa"
            )
        for number in range(version, SCHEMA_VERSION):
            with _transaction(db):
                for statement in _MIGRATIONS[number].split(";"):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A login's statement: on the loop, or on the store thread if the file is locked."""
        if self._db is None:
            raise StoreError("the store is closed")
        try:
            try:
                result = fn(self._db)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                # Nothing was written: a busy BEGIN IMMEDIATE changes nothing, and a busy
                # statement inside a transaction was rolled back by _transaction.
                return await self._scan(fn)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc
        if self._db.total_changes - self._changes_checkpointed >= self.CHECKPOINT_AFTER:
            self._changes_checkpointed = self._db.total_changes
            self._checkpoint_due.set()
        return result

    async def _scan(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Work that may wait or read many rows: on the store thread, its own connection."""

        def on_worker() -> T:
            if self._worker_db is None:
                raise StoreError("the store is closed")
            return fn(self._worker_db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, on_worker)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc

    async def _checkpoints(self) -> None:
        """Copy the WAL back into the database off the loop, so the WAL stays small."""

        def checkpoint(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never blocks the loop's writes

        while self._db is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.CHECKPOINT_EVERY):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            # a failed checkpoint is retried next time; the WAL keeps every commit
            with contextlib.suppress(StoreError):
                await self._scan(checkpoint)

    async def get_account(self, user: str) -> Account | None:
        def q(db: sqlite3.Connection) -> Account | None:
            row = db.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE user = ?",  # noqa: S608 (constant)
                (user,),
            ).fetchone()
            return None if row is None else account_from_row(row)

        return await self._run(q)

    async def begin_enrolment(self, pending: PendingEnrolment) -> None:
        p = pending

        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO enrolments (user, secret, algorithm, digits, period,"
                " created_at, uid, expires_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                enrolment_values(p),
            )

        await self._run(q)

    async def get_pending(self, user: str) -> PendingEnrolment | None:
        def q(db: sqlite3.Connection) -> PendingEnrolment | None:
            row = db.execute(
                "SELECT secret, algorithm, digits, period, created_at, uid, expires_at, origin"
                " FROM enrolments WHERE user = ?",
                (user,),
            ).fetchone()
            if row is None:
                return None
            return PendingEnrolment(user, row[0], TokenParams(*row[1:4]), *row[4:])

        return await self._run(q)

    async def activate(
        self,
        pending: PendingEnrolment,
        step: int | None,
        now: float,
        recovery: Sequence[bytes] = (),
        rhost: str | None = None,
    ) -> None:
        p = pending

        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO accounts (user, state, secret, algorithm, digits, period,"
                    " enrolled_at, last_step, clock_offset, updated_at, state_changed_at, uid,"
                    " kind, last_verified_at, last_rhost)"
                    " VALUES (?, 'active', ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET state = 'active', secret = excluded.secret,"
                    " algorithm = excluded.algorithm, digits = excluded.digits,"
                    " period = excluded.period, kind = excluded.kind,"
                    " enrolled_at = excluded.enrolled_at,"
                    " last_step = excluded.last_step, clock_offset = 0,"
                    " updated_at = excluded.updated_at, deadline = NULL, exempt_reason = NULL,"
                    " exempt_until = NULL, state_changed_at = excluded.state_changed_at,"
                    " uid = coalesce(excluded.uid, uid),"
                    " last_verified_at = excluded.last_verified_at,"
                    " last_rhost = excluded.last_rhost",
                    activation_values(p, step, now, rhost),
                )
                db.execute("DELETE FROM enrolments WHERE user = ?", (p.user,))
                _replace_codes(db, p.user, recovery, now)

        await self._run(q)

    async def consume_step(
        self, user: str, step: int, offset: int, now: float, login: Site | None
    ) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                # a login also records when and from where; a mere proof keeps them
                cur = db.execute(
                    "UPDATE accounts SET last_step = ?, clock_offset = ?, updated_at = ?,"
                    " last_verified_at = coalesce(?, last_verified_at),"
                    " last_rhost = coalesce(?, last_rhost)"
                    " WHERE user = ? AND state = 'active' AND (last_step IS NULL OR last_step < ?)",
                    (
                        step,
                        offset,
                        now,
                        None if login is None else now,
                        None if login is None else login.rhost,
                        user,
                        step,
                    ),
                )
                if cur.rowcount == 1 and login is not None:
                    db.execute(
                        "INSERT INTO logins (user, at, service, rhost, method)"
                        " SELECT ?, ?, ?, ?, kind FROM accounts WHERE user = ?",
                        (user, now, login.service, login.rhost, user),
                    )
            return cur.rowcount == 1

        return await self._run(q)

    async def set_state(self, user: str, change: StateChange, now: float) -> None:
        c = change

        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO accounts (user, state, updated_at, state_changed_at, deadline,"
                    " exempt_reason, exempt_until, uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET state = excluded.state,"
                    " updated_at = excluded.updated_at, state_changed_at = excluded.updated_at,"
                    " deadline = excluded.deadline, exempt_reason = excluded.exempt_reason,"
                    " exempt_until = excluded.exempt_until, uid = coalesce(uid, excluded.uid)",
                    (user, c.state, now, now, c.deadline, c.exempt_reason, c.exempt_until, c.uid),
                )
                if c.erase:
                    # a token's kind stays (re-enrolment sets it); the email method goes with
                    # the rest, so an erased account asks for nothing
                    db.execute(
                        "UPDATE accounts SET secret = NULL, last_step = NULL, enrolled_at = NULL,"
                        " kind = CASE WHEN kind = 'email' THEN 'totp' ELSE kind END WHERE user = ?",
                        (user,),
                    )
                    db.execute("DELETE FROM enrolments WHERE user = ?", (user,))
                    db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))

        await self._run(q)

    async def replace_recovery_codes(self, user: str, digests: Sequence[bytes], now: float) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _replace_codes(db, user, digests, now)

        await self._run(q)

    async def use_recovery_code(
        self, user: str, digest: bytes, now: float, login: Site | None
    ) -> int | None:
        def q(db: sqlite3.Connection) -> int | None:
            with _transaction(db):
                gone = db.execute(
                    "DELETE FROM recovery_codes WHERE user = ? AND digest = ? AND EXISTS"
                    " (SELECT 1 FROM accounts WHERE user = ? AND state = 'active')",
                    (user, digest, user),
                ).rowcount
                if gone != 1:
                    return None
                if login is not None:
                    db.execute(
                        "UPDATE accounts SET last_verified_at = ?, last_rhost = ?, updated_at = ?"
                        " WHERE user = ?",
                        (now, login.rhost, now, user),
                    )
                    db.execute(
                        "INSERT INTO logins (user, at, service, rhost, method)"
                        " VALUES (?, ?, ?, ?, 'recovery')",
                        (user, now, login.service, login.rhost),
                    )
                (left,) = db.execute(
                    "SELECT count(*) FROM recovery_codes WHERE user = ?", (user,)
                ).fetchone()
                return int(left)

        return await self._run(q)

    async def recovery_codes_left(self, user: str) -> int:
        def q(db: sqlite3.Connection) -> int:
            (left,) = db.execute(
                "SELECT count(*) FROM recovery_codes WHERE user = ?", (user,)
            ).fetchone()
            return int(left)

        return await self._run(q)

    async def accounts(self) -> list[tuple[Account, Counter]]:
        def q(db: sqlite3.Connection) -> list[tuple[Account, Counter]]:
            rows = db.execute(
                f"SELECT {_ACCOUNT_COLUMNS}, g.failures, g.first_at, g.until, g.total FROM accounts"  # noqa: S608
                " LEFT JOIN guard g ON g.user = accounts.user AND g.source = ?"
                " ORDER BY accounts.user",
                (ACCOUNT_SOURCE,),
            ).fetchall()
            n = len(_ACCOUNT_COLUMNS.split(","))
            return [(account_from_row(r[:n]), counter_from_row(r[n:])) for r in rows]

        return await self._scan(q)

    async def history(self, user: str, limit: int) -> list[Login]:
        def q(db: sqlite3.Connection) -> list[Login]:
            rows = db.execute(
                "SELECT at, service, rhost, method FROM logins WHERE user = ?"
                " ORDER BY at DESC LIMIT ?",
                (user, limit),
            ).fetchall()
            return [Login(*r) for r in rows]

        return await self._run(q)

    async def get_guard(self, user: str, source: str) -> GuardState:
        return await self._run(lambda db: _read_guard(db, user, source))

    async def put_guard(self, user: str, source: str, state: GuardState) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _write_guard(db, user, source, state)

        await self._run(q)

    async def update_guard(
        self, user: str, source: str, change: Callable[[GuardState], GuardState]
    ) -> GuardState:
        def q(db: sqlite3.Connection) -> GuardState:
            with _transaction(db):  # BEGIN IMMEDIATE: the write lock before the read
                new = change(_read_guard(db, user, source))
                _write_guard(db, user, source, new)
            return new

        return await self._run(q)

    async def source_blocks(self, now: float, user: str | None = None) -> list[SourceBlock]:
        def q(db: sqlite3.Connection) -> list[SourceBlock]:
            rows = db.execute(
                "SELECT user, source, until FROM guard WHERE source != ? AND until > ?"
                " AND (? IS NULL OR user = ?) ORDER BY user, source",
                (ACCOUNT_SOURCE, now, user, user),
            ).fetchall()
            return [SourceBlock(u, src, math.inf if t >= _FOREVER else t) for u, src, t in rows]

        return await self._run(q)

    async def clear_guard(self, user: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                return db.execute("DELETE FROM guard WHERE user = ?", (user,)).rowcount > 0

        return await self._run(q)

    async def spellings(self, user: str) -> list[str]:
        def q(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT user FROM accounts WHERE lower(user) = lower(?) UNION"
                " SELECT user FROM enrolments WHERE lower(user) = lower(?)",
                (user, user),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._run(q)

    async def bind_uid(self, user: str, uid: int) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                for table in ("accounts", "enrolments"):
                    db.execute(
                        f"UPDATE {table} SET uid = ? WHERE user = ? AND uid IS NULL",  # noqa: S608
                        (uid, user),
                    )

        await self._run(q)

    async def forget(self, user: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                gone = 0
                for table in USER_TABLES:
                    sql = f"DELETE FROM {table} WHERE user = ?"  # noqa: S608 (constant names)
                    gone += db.execute(sql, (user,)).rowcount
                return gone > 0

        return await self._run(q)

    async def get_address(self, user: str) -> Address | None:
        def q(db: sqlite3.Connection) -> Address | None:
            row = db.execute(
                "SELECT user, address, confirmed_at, uid FROM addresses WHERE user = ?", (user,)
            ).fetchone()
            return None if row is None else Address(*row)

        return await self._run(q)

    async def addresses(self) -> dict[str, Address]:
        def q(db: sqlite3.Connection) -> dict[str, Address]:
            rows = db.execute("SELECT user, address, confirmed_at, uid FROM addresses")
            return {r[0]: Address(*r) for r in rows}

        return await self._scan(q)

    async def set_address(self, address: Address, now: float) -> None:
        a = address

        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT OR REPLACE INTO addresses (user, address, confirmed_at, uid,"
                    " updated_at) VALUES (?, ?, ?, ?, ?)",
                    (a.user, a.address, a.confirmed_at, a.uid, now),
                )
                db.execute("UPDATE email_codes SET digest = NULL WHERE user = ?", (a.user,))

        await self._run(q)

    async def confirm_address(self, user: str, address: str, now: float) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE addresses SET confirmed_at = ?, updated_at = ?"
                " WHERE user = ? AND address = ?",
                (now, now, user, address),
            )
            return cur.rowcount == 1

        return await self._run(q)

    async def put_email_code(
        self,
        user: str,
        digest: bytes,
        purpose: CodePurpose,
        expires_at: float,
        now: float,
        interval: float,
    ) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT INTO email_codes (user, digest, purpose, expires_at, sent_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user) DO UPDATE SET"
                " digest = excluded.digest, purpose = excluded.purpose,"
                " expires_at = excluded.expires_at, sent_at = excluded.sent_at"
                " WHERE email_codes.sent_at <= ?",
                (user, digest, str(purpose), expires_at, now, now - interval),
            )
            return cur.rowcount == 1

        return await self._run(q)

    async def take_email_code(
        self, user: str, digest: bytes, purpose: CodePurpose, now: float, login: Site | None
    ) -> bool:
        method = "email_recovery" if purpose is CodePurpose.RECOVERY else "email"

        def q(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                cur = db.execute(
                    "UPDATE email_codes SET digest = NULL"
                    " WHERE user = ? AND digest = ? AND purpose = ? AND expires_at > ?",
                    (user, digest, str(purpose), now),
                )
                if cur.rowcount == 1 and login is not None:
                    db.execute(
                        "UPDATE accounts SET last_verified_at = ?, last_rhost = ?, updated_at = ?"
                        " WHERE user = ?",
                        (now, login.rhost, now, user),
                    )
                    db.execute(
                        "INSERT INTO logins (user, at, service, rhost, method)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (user, now, login.service, login.rhost, method),
                    )
            return cur.rowcount == 1

        return await self._run(q)

    async def void_email_code(self, user: str, digest: bytes) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM email_codes WHERE user = ? AND digest = ?", (user, digest))

        await self._run(q)

    async def email_code_sent_at(self, user: str) -> float | None:
        def q(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT sent_at FROM email_codes WHERE user = ?", (user,)).fetchone()
            return None if row is None else float(row[0])

        return await self._run(q)

    async def activate_email(self, user: str, uid: int | None, now: float) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO accounts (user, state, kind, enrolled_at, updated_at,"
                    " state_changed_at, uid) VALUES (?, 'active', 'email', ?, ?, ?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET state = 'active', kind = 'email',"
                    " secret = NULL, last_step = NULL, clock_offset = 0,"
                    " enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at,"
                    " state_changed_at = excluded.state_changed_at, deadline = NULL,"
                    " exempt_reason = NULL, exempt_until = NULL, uid = coalesce(uid, excluded.uid)",
                    (user, now, now, now, uid),
                )
                db.execute("DELETE FROM enrolments WHERE user = ?", (user,))

        await self._run(q)

    async def get_key_check(self) -> bytes | None:
        def q(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            return None if row is None else bytes(row[0])

        return await self._scan(q)

    async def set_key_check(self, value: bytes) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute("INSERT OR REPLACE INTO meta VALUES ('key_check', ?)", (value,))

        await self._scan(q)

    async def any_sealed_secret(self) -> tuple[str, bytes] | None:
        def q(db: sqlite3.Connection) -> tuple[str, bytes] | None:
            row = db.execute(
                "SELECT user, secret FROM accounts WHERE secret IS NOT NULL UNION ALL"
                " SELECT user, secret FROM enrolments LIMIT 1"
            ).fetchone()
            return None if row is None else (row[0], bytes(row[1]))

        return await self._scan(q)

    async def list_accounts(self) -> dict[str, str]:
        def q(db: sqlite3.Connection) -> dict[str, str]:
            # An enrolment still pending counts only for a user who has no account yet.
            found = {user: "pending" for (user,) in db.execute("SELECT user FROM enrolments")}
            found.update(db.execute("SELECT user, state FROM accounts").fetchall())
            return found

        return await self._scan(q)

    async def is_empty(self) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            return not any(_rows_in(db, table) for table in COPIED_TABLES if table != "meta")

        return await self._scan(q)

    async def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        def q(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
            db.execute("BEGIN")  # one snapshot of every table
            try:
                found = {}
                for table, columns in COPIED_TABLES.items():
                    names = ", ".join(columns)
                    rows = db.execute(f"SELECT {names} FROM {table}").fetchall()  # noqa: S608
                    found[table] = [portable_row(table, r) for r in rows]
                return found
            finally:
                db.execute("ROLLBACK")

        return await self._scan(q)

    async def import_rows(self, rows: dict[str, list[tuple[Any, ...]]], *, replace: bool) -> None:
        def q(db: sqlite3.Connection) -> None:
            with _transaction(db):
                if not replace and any(_rows_in(db, t) for t in COPIED_TABLES if t != "meta"):
                    raise StoreError(NOT_EMPTY.format(where=self._path))
                for table, columns in COPIED_TABLES.items():
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 (constant names)
                    marks = ", ".join("?" * len(columns))
                    db.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                        [_sqlite_row(table, r) for r in rows.get(table, [])],
                    )

        await self._scan(q)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._checkpointer is not None:  # it ends once it sees the store closed
            self._checkpoint_due.set()
            await self._checkpointer
            self._checkpointer = None

        def close_worker() -> None:
            # the last connection to close checkpoints the WAL and removes it
            if self._worker_db is not None:
                self._worker_db.close()
                self._worker_db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close_worker)
        self._executor.shutdown(wait=True)

"""Per-user state behind one interface; SQLite is the embedded default.

Every method is a coroutine, so a PostgreSQL backend (many hosts sharing users,
replay state and lockouts) can implement the same interface. The SQLite backend
runs every statement on one dedicated thread: the event loop never blocks on
disk, and statements are serialised without extra locking.

Replay protection lives here as one conditional UPDATE (``consume_step``): the
database, not the caller, decides atomically whether a time step is still
unused, so two parallel logins with one code give exactly one success — on
PostgreSQL across hosts too.

Secrets arrive sealed (see secretbox.py); this module never sees plaintext.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mfad.errors import StoreError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TokenParams:
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30


STATES = ("pending", "active", "suspended", "disabled", "exempt")


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    state: str  # one of STATES; "none" is the absence of a row
    sealed_secret: bytes | None
    params: TokenParams
    enrolled_at: float | None
    last_step: int | None
    last_verified_at: float | None
    last_rhost: str | None
    clock_offset: int  # steps between the phone's clock and ours at the last success
    deadline: float | None = None  # pending: enrol before this, or login is refused
    exempt_reason: str | None = None
    exempt_until: float | None = None  # exempt: None means no expiry
    state_changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """Where a login comes from, as PAM told us."""

    service: str
    rhost: str


@dataclass(frozen=True, slots=True)
class Login:
    at: float
    service: str
    rhost: str
    method: str  # "totp" | "recovery"


@dataclass(frozen=True, slots=True)
class PendingEnrolment:
    user: str
    sealed_secret: bytes
    params: TokenParams
    created_at: float


@dataclass(frozen=True, slots=True)
class Counter:
    """Consecutive wrong codes since `first_at`, and a lock or block that may be in force."""

    failures: int = 0
    first_at: float = 0.0
    until: float = 0.0  # locked/blocked until this time; 0 = not; inf = until an admin unlocks


@dataclass(frozen=True, slots=True)
class GuardState:
    account: Counter  # all sources together: the account lock
    source: Counter  # this (user, remote host) pair: the per-source block


@dataclass(frozen=True, slots=True)
class StateChange:
    state: str
    deadline: float | None = None
    exempt_reason: str | None = None
    exempt_until: float | None = None
    erase: bool = False  # drop secret, pending enrolment and recovery codes; history stays


class Store(abc.ABC):
    """What the daemon needs from storage; nothing else touches the tables."""

    @abc.abstractmethod
    async def get_account(self, user: str) -> Account | None: ...

    @abc.abstractmethod
    async def begin_enrolment(self, pending: PendingEnrolment) -> None:
        """Keep a new secret aside until a code confirms it; replaces an older pending one."""

    @abc.abstractmethod
    async def get_pending(self, user: str) -> PendingEnrolment | None: ...

    @abc.abstractmethod
    async def activate(
        self, pending: PendingEnrolment, step: int, now: float, recovery: Sequence[bytes] = ()
    ) -> None:
        """Make a confirmed secret the user's token with fresh recovery codes (as digests);
        its confirming step counts as used."""

    @abc.abstractmethod
    async def consume_step(
        self, user: str, step: int, offset: int, now: float, login: Site | None
    ) -> bool:
        """Atomically mark `step` used; False if it (or a later step) was used already.

        With `login`, the use is a login and goes into the history; without, it only
        proves the token (e.g. to regenerate recovery codes) and is not a login."""

    @abc.abstractmethod
    async def set_state(self, user: str, change: StateChange, now: float) -> None:
        """Move `user` to a new lifecycle state (creating the row); erase the token if asked."""

    @abc.abstractmethod
    async def replace_recovery_codes(
        self, user: str, digests: Sequence[bytes], now: float
    ) -> None: ...

    @abc.abstractmethod
    async def use_recovery_code(
        self, user: str, digest: bytes, now: float, rhost: str, service: str
    ) -> int | None:
        """Atomically spend one code of an active user; the number left, or None if no match."""

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
        """Replace both counters; callers serialise per user (see lockout.Guard)."""

    @abc.abstractmethod
    async def clear_guard(self, user: str) -> bool:
        """Forget every counter, lock and block of `user`; False if there were none."""

    # --- audit review (mfa audit summary): added by the audit-trail work ---
    @abc.abstractmethod
    async def list_accounts(self) -> dict[str, str]:
        """Every user the store knows: `active`, `disabled`, or `pending` (never confirmed)."""
    # --- end audit review ---

    @abc.abstractmethod
    async def close(self) -> None: ...


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
]
ACCOUNT_SOURCE = "*"
_ACCOUNT_COLUMNS = (
    "accounts.user, state, secret, algorithm, digits, period, enrolled_at, last_step,"
    " last_verified_at, last_rhost, clock_offset, deadline, exempt_reason, exempt_until,"
    " state_changed_at"
)


def _account(row: Sequence[Any]) -> Account:
    return Account(row[0], row[1], row[2], TokenParams(*row[3:6]), *row[6:])


def _replace_codes(db: sqlite3.Connection, user: str, digests: Sequence[bytes], now: float) -> None:
    db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
    db.executemany(
        "INSERT INTO recovery_codes VALUES (?, ?, ?)", [(user, d, now) for d in digests]
    )


_FOREVER = 1e308


def _counter(row: Sequence[Any]) -> Counter:
    """A guard row (failures, first_at, until) as a Counter; NULLs (no row) are zero."""
    failures, first_at, until = row
    if until is not None and until >= _FOREVER:
        until = math.inf
    return Counter(failures or 0, first_at or 0.0, until or 0.0)
SCHEMA_VERSION = len(_MIGRATIONS)


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
    """One SQLite file in WAL mode, driven from one thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfad-store")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        await store._run(store._open)
        return store

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            # NORMAL in WAL mode survives a killed daemon; only a power cut can lose the
            # last commits, which for replay state means at most one time step's codes.
            db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            db.execute("PRAGMA busy_timeout=5000")
            self._db = db
            self._migrate(db)
            self._path.chmod(0o600)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self._path}: {exc}") from exc

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

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    async def get_account(self, user: str) -> Account | None:
        def q() -> Account | None:
            row = self._conn().execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE user = ?",  # noqa: S608 (constant)
                (user,),
            ).fetchone()
            return None if row is None else _account(row)

        return await self._run(q)

    async def begin_enrolment(self, pending: PendingEnrolment) -> None:
        p = pending

        def q() -> None:
            self._conn().execute(
                "INSERT OR REPLACE INTO enrolments VALUES (?, ?, ?, ?, ?, ?)",
                (p.user, p.sealed_secret, p.params.algorithm, p.params.digits,
                 p.params.period, p.created_at),
            )

        await self._run(q)

    async def get_pending(self, user: str) -> PendingEnrolment | None:
        def q() -> PendingEnrolment | None:
            row = self._conn().execute(
                "SELECT secret, algorithm, digits, period, created_at FROM enrolments"
                " WHERE user = ?",
                (user,),
            ).fetchone()
            if row is None:
                return None
            return PendingEnrolment(user, row[0], TokenParams(*row[1:4]), row[4])

        return await self._run(q)

    async def activate(
        self, pending: PendingEnrolment, step: int, now: float, recovery: Sequence[bytes] = ()
    ) -> None:
        p = pending

        def q() -> None:
            with _transaction(self._conn()) as db:
                db.execute(
                    "INSERT INTO accounts (user, state, secret, algorithm, digits, period,"
                    " enrolled_at, last_step, clock_offset, updated_at, state_changed_at)"
                    " VALUES (?, 'active', ?, ?, ?, ?, ?, ?, 0, ?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET state = 'active', secret = excluded.secret,"
                    " algorithm = excluded.algorithm, digits = excluded.digits,"
                    " period = excluded.period, enrolled_at = excluded.enrolled_at,"
                    " last_step = excluded.last_step, clock_offset = 0,"
                    " updated_at = excluded.updated_at, deadline = NULL, exempt_reason = NULL,"
                    " exempt_until = NULL, state_changed_at = excluded.state_changed_at",
                    (p.user, p.sealed_secret, p.params.algorithm, p.params.digits,
                     p.params.period, now, step, now, now),
                )
                db.execute("DELETE FROM enrolments WHERE user = ?", (p.user,))
                _replace_codes(db, p.user, recovery, now)

        await self._run(q)

    async def consume_step(
        self, user: str, step: int, offset: int, now: float, login: Site | None
    ) -> bool:
        def q() -> bool:
            with _transaction(self._conn()) as db:
                cur = db.execute(
                    "UPDATE accounts SET last_step = ?, clock_offset = ?, updated_at = ?"
                    " WHERE user = ? AND state = 'active' AND (last_step IS NULL OR last_step < ?)",
                    (step, offset, now, user, step),
                )
                if cur.rowcount == 1 and login is not None:
                    db.execute(
                        "UPDATE accounts SET last_verified_at = ?, last_rhost = ? WHERE user = ?",
                        (now, login.rhost, user),
                    )
                    db.execute(
                        "INSERT INTO logins (user, at, service, rhost, method)"
                        " VALUES (?, ?, ?, ?, 'totp')",
                        (user, now, login.service, login.rhost),
                    )
            return cur.rowcount == 1

        return await self._run(q)

    async def set_state(self, user: str, change: StateChange, now: float) -> None:
        c = change

        def q() -> None:
            with _transaction(self._conn()) as db:
                db.execute(
                    "INSERT INTO accounts (user, state, updated_at, state_changed_at, deadline,"
                    " exempt_reason, exempt_until) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET state = excluded.state,"
                    " updated_at = excluded.updated_at, state_changed_at = excluded.updated_at,"
                    " deadline = excluded.deadline, exempt_reason = excluded.exempt_reason,"
                    " exempt_until = excluded.exempt_until",
                    (user, c.state, now, now, c.deadline, c.exempt_reason, c.exempt_until),
                )
                if c.erase:
                    db.execute(
                        "UPDATE accounts SET secret = NULL, last_step = NULL, enrolled_at = NULL"
                        " WHERE user = ?", (user,),
                    )
                    db.execute("DELETE FROM enrolments WHERE user = ?", (user,))
                    db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))

        await self._run(q)

    async def replace_recovery_codes(self, user: str, digests: Sequence[bytes], now: float) -> None:
        def q() -> None:
            with _transaction(self._conn()) as db:
                _replace_codes(db, user, digests, now)

        await self._run(q)

    async def use_recovery_code(
        self, user: str, digest: bytes, now: float, rhost: str, service: str
    ) -> int | None:
        def q() -> int | None:
            with _transaction(self._conn()) as db:
                gone = db.execute(
                    "DELETE FROM recovery_codes WHERE user = ? AND digest = ? AND EXISTS"
                    " (SELECT 1 FROM accounts WHERE user = ? AND state = 'active')",
                    (user, digest, user),
                ).rowcount
                if gone != 1:
                    return None
                db.execute(
                    "UPDATE accounts SET last_verified_at = ?, last_rhost = ?, updated_at = ?"
                    " WHERE user = ?", (now, rhost, now, user),
                )
                db.execute(
                    "INSERT INTO logins (user, at, service, rhost, method)"
                    " VALUES (?, ?, ?, ?, 'recovery')", (user, now, service, rhost),
                )
                (left,) = db.execute(
                    "SELECT count(*) FROM recovery_codes WHERE user = ?", (user,)
                ).fetchone()
                return int(left)

        return await self._run(q)

    async def recovery_codes_left(self, user: str) -> int:
        def q() -> int:
            (left,) = self._conn().execute(
                "SELECT count(*) FROM recovery_codes WHERE user = ?", (user,)
            ).fetchone()
            return int(left)

        return await self._run(q)

    async def accounts(self) -> list[tuple[Account, Counter]]:
        def q() -> list[tuple[Account, Counter]]:
            rows = self._conn().execute(
                f"SELECT {_ACCOUNT_COLUMNS}, g.failures, g.first_at, g.until FROM accounts"  # noqa: S608
                " LEFT JOIN guard g ON g.user = accounts.user AND g.source = ?"
                " ORDER BY accounts.user",
                (ACCOUNT_SOURCE,),
            ).fetchall()
            n = len(_ACCOUNT_COLUMNS.split(","))
            return [(_account(r[:n]), _counter(r[n:])) for r in rows]

        return await self._run(q)

    async def history(self, user: str, limit: int) -> list[Login]:
        def q() -> list[Login]:
            rows = self._conn().execute(
                "SELECT at, service, rhost, method FROM logins WHERE user = ?"
                " ORDER BY at DESC LIMIT ?", (user, limit),
            ).fetchall()
            return [Login(*r) for r in rows]

        return await self._run(q)

    async def get_guard(self, user: str, source: str) -> GuardState:
        def q() -> GuardState:
            rows = self._conn().execute(
                "SELECT source, failures, first_at, until FROM guard"
                " WHERE user = ? AND source IN (?, ?)",
                (user, ACCOUNT_SOURCE, source),
            ).fetchall()
            found = {r[0]: _counter(r[1:]) for r in rows}
            return GuardState(found.get(ACCOUNT_SOURCE, Counter()), found.get(source, Counter()))

        return await self._run(q)

    async def put_guard(self, user: str, source: str, state: GuardState) -> None:
        def q() -> None:
            with _transaction(self._conn()) as db:
                for key, counter in ((ACCOUNT_SOURCE, state.account), (source, state.source)):
                    if counter == Counter():
                        db.execute("DELETE FROM guard WHERE user = ? AND source = ?", (user, key))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO guard VALUES (?, ?, ?, ?, ?)",
                            (user, key, counter.failures, counter.first_at,
                             min(counter.until, _FOREVER)),
                        )

        await self._run(q)

    async def clear_guard(self, user: str) -> bool:
        def q() -> bool:
            with _transaction(self._conn()) as db:
                return db.execute("DELETE FROM guard WHERE user = ?", (user,)).rowcount > 0

        return await self._run(q)

    # --- audit review (mfa audit summary): added by the audit-trail work ---
    async def list_accounts(self) -> dict[str, str]:
        def q() -> dict[str, str]:
            db = self._conn()
            # An enrolment still pending counts only for a user who has no account yet.
            found = {user: "pending" for (user,) in db.execute("SELECT user FROM enrolments")}
            found.update(db.execute("SELECT user, state FROM accounts").fetchall())
            return found

        return await self._run(q)
    # --- end audit review ---

    async def close(self) -> None:
        def q() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(q)
        self._executor.shutdown(wait=True)

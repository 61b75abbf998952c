"""The Store on PostgreSQL: many hosts share users, replay state and lockouts.

Same contract as store.SqliteStore, method for method (tests/test_store_contract.py
runs one suite against both). What differs is only how the database keeps it:

- Replay protection is one conditional UPDATE, as in SQLite: under READ
  COMMITTED a second UPDATE of the same row waits for the first and re-checks
  its WHERE clause on the committed row, so parallel logins with one code on
  any number of daemons give exactly one success. A recovery code is spent by
  one DELETE the same way.
- Each method runs in one transaction on a connection from a pool
  (psycopg_pool); psycopg's async API never blocks the event loop.
- A dead or slow database fails a login closed within seconds, not minutes:
  connecting gives up after ``connect_timeout``, waiting for a free pooled
  connection after ``timeout``, and every statement after ``statement_timeout``
  (a lock held elsewhere included). Every failure is a StoreError whose
  message names the database (host, port, database, user; never the password).
- The schema is a list of forward migrations with its version in the table
  ``mfad_schema``; one daemon at a time applies them, under a transaction-level
  advisory lock with a constant key, and a store whose version is newer than
  this code knows is refused.
- A lock "until an admin unlocks" (Counter.until == inf) is stored as the
  double precision value 'Infinity', which PostgreSQL keeps exactly (SQLite
  stores 1e308 instead); both read back as math.inf.
- The column ``"user"`` is quoted everywhere: ``user`` is a reserved word.
  Case-insensitive lookups (``spellings``) compare ``lower("user" COLLATE "C")``,
  which folds ASCII letters only, as SQLite's lower() does, whatever the
  database's locale; an expression index serves them.

- Counting wrong codes (update_guard) locks the user's two guard rows with
  SELECT ... FOR UPDATE for its read-modify-write, so two hosts counting for one
  user at the same instant take turns and neither count is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from mfad.errors import StoreError
from mfad.model import (
    Account,
    Address,
    CodePurpose,
    Counter,
    GuardState,
    Login,
    PendingEnrolment,
    Site,
    SourceBlock,
    StateChange,
    TokenParams,
)
from mfad.store import (
    ACCOUNT_SOURCE,
    COPIED_TABLES,
    NOT_EMPTY,
    USER_TABLES,
    AuditRow,
    Store,
    account_from_row,
    activation_values,
    counter_from_row,
    enrolment_values,
    portable_row,
)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# Any constant shared by every mfad; pg_advisory_xact_lock takes a bigint. ("mfad" in ASCII.)
MIGRATION_LOCK_KEY = 0x6D666164

_MIGRATIONS: list[str] = [
    # 1: what SQLite's schema version 2 holds: accounts with their lifecycle and uid,
    # pending enrolments, recovery codes, the history of second-factor logins, the
    # lockout counters, and meta (the key check value). Later versions append here.
    """
    CREATE TABLE accounts (
        "user" text PRIMARY KEY,
        state text NOT NULL
            CHECK (state IN ('pending', 'active', 'suspended', 'disabled', 'exempt')),
        secret bytea,
        algorithm text NOT NULL DEFAULT 'SHA1',
        digits integer NOT NULL DEFAULT 6,
        period integer NOT NULL DEFAULT 30,
        enrolled_at double precision,
        last_step bigint,
        last_verified_at double precision,
        last_rhost text,
        clock_offset integer NOT NULL DEFAULT 0,
        updated_at double precision NOT NULL,
        deadline double precision,
        exempt_reason text,
        exempt_until double precision,
        state_changed_at double precision,
        uid bigint
    );
    CREATE TABLE enrolments (
        "user" text PRIMARY KEY,
        secret bytea NOT NULL,
        algorithm text NOT NULL,
        digits integer NOT NULL,
        period integer NOT NULL,
        created_at double precision NOT NULL,
        uid bigint,
        expires_at double precision,
        origin text
    );
    CREATE TABLE recovery_codes (
        "user" text NOT NULL,
        digest bytea NOT NULL,
        created_at double precision NOT NULL,
        PRIMARY KEY ("user", digest)
    );
    CREATE TABLE logins (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        "user" text NOT NULL,
        at double precision NOT NULL,
        service text NOT NULL,
        rhost text NOT NULL,
        method text NOT NULL
    );
    CREATE INDEX logins_user_at ON logins ("user", at);
    -- any user name, enrolled or not, so that unknown names behave exactly like real
    -- ones. source '*' is the account as a whole. until 'Infinity' means until unlocked.
    CREATE TABLE guard (
        "user" text NOT NULL,
        source text NOT NULL,
        failures integer NOT NULL,
        first_at double precision NOT NULL,
        until double precision NOT NULL,
        total integer NOT NULL DEFAULT 0,
        PRIMARY KEY ("user", source)
    );
    CREATE TABLE meta (key text PRIMARY KEY, value bytea NOT NULL);
    CREATE INDEX accounts_user_lower ON accounts (lower("user" COLLATE "C"));
    CREATE INDEX enrolments_user_lower ON enrolments (lower("user" COLLATE "C"))
    """,
    # 2: the fleet's audit table. Every host's records, as written to its own file, so that
    # `mfa audit --all-hosts` reads the fleet and each host's chain can be checked here.
    # Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE to any role but the
    # table's owner's own ALTER/DROP (README, "A role with least privilege").
    """
    CREATE TABLE audit_records (
        host text NOT NULL,
        seq bigint NOT NULL,
        at double precision NOT NULL,
        event text NOT NULL,
        "user" text,
        line text NOT NULL,
        PRIMARY KEY (host, seq)
    );
    CREATE INDEX audit_records_at ON audit_records (at);
    CREATE FUNCTION mfad_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_records is append-only';
    END $$;
    CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records
        FOR EACH ROW EXECUTE FUNCTION mfad_audit_append_only();
    CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
        FOR EACH STATEMENT EXECUTE FUNCTION mfad_audit_append_only()
    """,
    # 3: a token is TOTP or HOTP (RFC 4226); an HOTP token's last used counter is last_step.
    """
    ALTER TABLE accounts ADD COLUMN kind text NOT NULL DEFAULT 'totp'
        CHECK (kind IN ('totp', 'hotp'))
    """,
    # 4: the email method, users' addresses, and the one outstanding mailed code per user
    # (its keyed digest; NULL once spent, sent_at kept for the resend interval).
    """
    ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
    ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
        CHECK (kind IN ('totp', 'hotp', 'email'));
    CREATE TABLE addresses (
        "user" text PRIMARY KEY,
        address text NOT NULL,
        confirmed_at double precision,
        uid bigint,
        updated_at double precision NOT NULL
    );
    CREATE TABLE email_codes (
        "user" text PRIMARY KEY,
        digest bytea,
        purpose text NOT NULL CHECK (purpose IN ('login', 'confirm', 'recovery')),
        expires_at double precision NOT NULL,
        sent_at double precision NOT NULL
    )
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)

_ACCOUNT_COLUMNS = (
    'accounts."user", state, secret, algorithm, digits, period, enrolled_at, last_step,'
    " last_verified_at, last_rhost, clock_offset, deadline, exempt_reason, exempt_until,"
    " state_changed_at, uid, kind"
)
_N_ACCOUNT_COLUMNS = len(_ACCOUNT_COLUMNS.split(","))
# psycopg takes only literal strings or bytes as a query: these are built from constants
_SELECT_ACCOUNT = f'SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE "user" = %s'.encode()  # noqa: S608
_SELECT_ACCOUNTS_WITH_LOCKS = (
    f"SELECT {_ACCOUNT_COLUMNS}, g.failures, g.first_at, g.until, g.total"  # noqa: S608
    ' FROM accounts LEFT JOIN guard g ON g."user" = accounts."user" AND g.source = %s'
    ' ORDER BY accounts."user" COLLATE "C"'
).encode()


def describe(dsn: str) -> str:
    """Where a DSN points, for messages: host, port, database and user, never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL (unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "the default socket"
    port = f":{params['port']}" if params.get("port") else ""
    db = params.get("dbname") or "the default database"
    user = f" as {params['user']}" if params.get("user") else ""
    return f"PostgreSQL {db} on {host}{port}{user}"


async def _write_guard(db: Conn, user: str, source: str, state: GuardState) -> None:
    for key, counter in ((ACCOUNT_SOURCE, state.account), (source, state.source)):
        if counter == Counter():
            await db.execute('DELETE FROM guard WHERE "user" = %s AND source = %s', (user, key))
        else:
            await db.execute(
                'INSERT INTO guard ("user", source, failures, first_at, until, total)'
                " VALUES (%s, %s, %s, %s, %s, %s)"
                ' ON CONFLICT ("user", source) DO UPDATE SET failures = excluded.failures,'
                " first_at = excluded.first_at, until = excluded.until,"
                " total = excluded.total",
                # inf is stored as 'Infinity'
                (
                    user,
                    key,
                    counter.failures,
                    counter.first_at,
                    float(counter.until),
                    counter.total,
                ),
            )


class PostgresStore(Store):
    """A pool of connections to one PostgreSQL database; see the module docstring."""

    CONNECT_TIMEOUT = 3  # seconds; libpq's connect_timeout (whole seconds, at least 2)
    STATEMENT_TIMEOUT = 5.0  # seconds any one statement (or lock wait) may take
    ACQUIRE_TIMEOUT = 5.0  # seconds to wait for a free pooled connection
    # seconds a caller waits for any one method, whatever the server does: below the PAM
    # module's default timeout= (10 s), so a login gets mfad's answer, not the module's
    ANSWER_TIMEOUT = 6.0
    MAX_CONNECTIONS = 10

    def __init__(self, dsn: str, pool: AsyncConnectionPool[Conn]) -> None:
        self._dsn = dsn
        self._where = describe(dsn)
        self._pool: AsyncConnectionPool[Conn] | None = pool
        self._abandoned: set[asyncio.Future[Any]] = set()  # timed-out work, cancelling

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        statement_timeout: float | None = None,
        max_connections: int | None = None,
    ) -> PostgresStore:
        """Connect, bring the schema up to date, and keep a pool of connections.

        StoreError if the database cannot be reached within seconds or its schema is
        newer than this mfad knows."""
        timeout = cls.STATEMENT_TIMEOUT if statement_timeout is None else statement_timeout
        where = describe(dsn)
        try:
            conninfo = cls._conninfo(dsn, timeout)
        except psycopg.Error as exc:
            raise StoreError(f"the store's DSN is malformed: {_scrub(exc, dsn)}") from exc
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {where}: {_scrub(exc, dsn)}") from exc
        try:
            await cls._migrate(conn, where)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot set up the store's schema in {where}: {_scrub(exc, dsn)}"
            ) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections or cls.MAX_CONNECTIONS,
            open=False,
            timeout=cls.ACQUIRE_TIMEOUT,
            # No check on every checkout (a round trip, a transaction on the server: half of
            # a login's): a connection the server dropped is found out by its first
            # statement, and _in_transaction runs the work again on a fresh one.
            name="mfad-store",
        )
        try:
            await pool.open(wait=True, timeout=cls.ACQUIRE_TIMEOUT)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot connect to {where}: {_scrub(exc, dsn)}") from exc
        return cls(dsn, pool)

    @classmethod
    def _conninfo(cls, dsn: str, statement_timeout: float) -> str:
        options = conninfo_to_dict(dsn).get("options") or ""
        ms = max(1, round(statement_timeout * 1000))
        # lock_timeout as well, so that a wait for a lock held elsewhere ends with a
        # message that says so ("lock timeout") rather than only "statement timeout"
        options = f"{options} -c statement_timeout={ms} -c lock_timeout={ms}".strip()
        return make_conninfo(
            dsn,
            connect_timeout=cls.CONNECT_TIMEOUT,
            options=options,
            application_name="mfad",
        )

    @staticmethod
    async def _migrate(conn: Conn, where: str) -> None:
        async with conn.transaction():
            # one daemon at a time; the lock ends with the transaction
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            # Read before anything is created: a role with no CREATE right (README, "A
            # role with least privilege") starts on a schema its owner brought up to date.
            row = await (await conn.execute("SELECT to_regclass('mfad_schema')")).fetchone()
            if row is None or row[0] is None:
                await conn.execute("CREATE TABLE mfad_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM mfad_schema")).fetchone()
            version = 0 if row is None or row[0] is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store in {where} has schema version {version}, newer than this "
                    f"mfad understands ({SCHEMA_VERSION}); upgrade pam-mfa"
                )
            for number in range(version, SCHEMA_VERSION):
                # one simple-protocol query runs every statement of a migration (and
                # leaves the semicolons inside a function's body alone)
                await conn.execute(_MIGRATIONS[number].encode())
            if version < SCHEMA_VERSION:
                await conn.execute("DELETE FROM mfad_schema")
                await conn.execute("INSERT INTO mfad_schema VALUES (%s)", (SCHEMA_VERSION,))

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` in one transaction on a pooled connection: committed if it returns.

        A server that stopped answering (a stalled host, a network that drops packets)
        never trips statement_timeout, which the server enforces: the caller gets a
        StoreError after ANSWER_TIMEOUT all the same, while psycopg cancels the
        statement (or drops the connection) in the background, which may take seconds."""
        if self._pool is None:
            raise StoreError("the store is closed")
        work = asyncio.ensure_future(self._in_transaction(self._pool, fn))
        try:
            async with asyncio.timeout(self.ANSWER_TIMEOUT):
                return await asyncio.shield(work)
        except TimeoutError:
            work.cancel()
            self._abandoned.add(work)
            work.add_done_callback(self._forget)
            raise StoreError(
                f"store {self._where}: no answer within {self.ANSWER_TIMEOUT:g} s"
            ) from None
        except asyncio.CancelledError:
            work.cancel()  # the caller gave up (its connection closed): so does the work
            raise

    def _forget(self, work: asyncio.Future[Any]) -> None:
        self._abandoned.discard(work)
        if not work.cancelled():
            work.exception()  # retrieved: its caller was told already

    async def _in_transaction(
        self, pool: AsyncConnectionPool[Conn], fn: Callable[[Conn], Awaitable[T]]
    ) -> T:
        try:
            for tries_left in (1, 0):
                try:
                    async with pool.connection() as conn:
                        try:
                            return await fn(conn)
                        except psycopg.OperationalError:
                            # A pooled connection the server dropped since (a restart, a
                            # failover): what ran on it was not committed, so the work
                            # runs once more on a new one. A break at COMMIT itself is not
                            # retried (it may have committed); it fails closed.
                            if tries_left and conn.broken:
                                raise _Dropped from None
                            raise
                except _Dropped:
                    await pool.check()  # the others idle beside it died too: replace them
                    continue
            raise AssertionError("unreachable: the second try returns or raises")
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled):
                what = "a statement took too long (statement_timeout or lock_timeout)"
                raise StoreError(f"store {self._where}: {what}: {_scrub(exc, self._dsn)}") from exc
            raise StoreError(f"store {self._where}: {_scrub(exc, self._dsn)}") from exc

    async def get_account(self, user: str) -> Account | None:
        async def q(db: Conn) -> Account | None:
            cur = await db.execute(
                _SELECT_ACCOUNT,
                (user,),
            )
            row = await cur.fetchone()
            return None if row is None else account_from_row(row)

        return await self._run(q)

    async def begin_enrolment(self, pending: PendingEnrolment) -> None:
        p = pending

        async def q(db: Conn) -> None:
            await db.execute(
                'INSERT INTO enrolments ("user", secret, algorithm, digits, period,'
                " created_at, uid, expires_at, origin) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ' ON CONFLICT ("user") DO UPDATE SET secret = excluded.secret,'
                " algorithm = excluded.algorithm, digits = excluded.digits,"
                " period = excluded.period, created_at = excluded.created_at,"
                " uid = excluded.uid, expires_at = excluded.expires_at, origin = excluded.origin",
                enrolment_values(p),
            )

        await self._run(q)

    async def get_pending(self, user: str) -> PendingEnrolment | None:
        async def q(db: Conn) -> PendingEnrolment | None:
            cur = await db.execute(
                "SELECT secret, algorithm, digits, period, created_at, uid, expires_at, origin"
                ' FROM enrolments WHERE "user" = %s',
                (user,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            return PendingEnrolment(user, bytes(row[0]), TokenParams(*row[1:4]), *row[4:])

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

        async def q(db: Conn) -> None:
            await db.execute(
                'INSERT INTO accounts ("user", state, secret, algorithm, digits, period,'
                " enrolled_at, last_step, clock_offset, updated_at, state_changed_at, uid, kind,"
                " last_verified_at, last_rhost)"
                " VALUES (%s, 'active', %s, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (\"user\") DO UPDATE SET state = 'active', secret = excluded.secret,"
                " algorithm = excluded.algorithm, digits = excluded.digits,"
                " period = excluded.period, kind = excluded.kind,"
                " enrolled_at = excluded.enrolled_at,"
                " last_step = excluded.last_step, clock_offset = 0,"
                " updated_at = excluded.updated_at, deadline = NULL, exempt_reason = NULL,"
                " exempt_until = NULL, state_changed_at = excluded.state_changed_at,"
                " uid = coalesce(excluded.uid, accounts.uid),"
                " last_verified_at = excluded.last_verified_at,"
                " last_rhost = excluded.last_rhost",
                activation_values(p, step, now, rhost),
            )
            await db.execute('DELETE FROM enrolments WHERE "user" = %s', (p.user,))
            await _replace_codes(db, p.user, recovery, now)

        await self._run(q)

    async def consume_step(
        self, user: str, step: int, offset: int, now: float, login: Site | None
    ) -> bool:
        async def q(db: Conn) -> bool:
            # a login also records when and from where; a mere proof keeps them
            cur = await db.execute(
                "UPDATE accounts SET last_step = %s, clock_offset = %s, updated_at = %s,"
                " last_verified_at = coalesce(%s, last_verified_at),"
                " last_rhost = coalesce(%s, last_rhost)"
                " WHERE \"user\" = %s AND state = 'active'"
                " AND (last_step IS NULL OR last_step < %s)",
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
            used = cur.rowcount == 1
            if used and login is not None:
                await db.execute(
                    'INSERT INTO logins ("user", at, service, rhost, method)'
                    ' SELECT %s, %s, %s, %s, kind FROM accounts WHERE "user" = %s',
                    (user, now, login.service, login.rhost, user),
                )
            return used

        return await self._run(q)

    async def set_state(self, user: str, change: StateChange, now: float) -> None:
        c = change

        async def q(db: Conn) -> None:
            await db.execute(
                'INSERT INTO accounts ("user", state, updated_at, state_changed_at, deadline,'
                " exempt_reason, exempt_until, uid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                ' ON CONFLICT ("user") DO UPDATE SET state = excluded.state,'
                " updated_at = excluded.updated_at, state_changed_at = excluded.updated_at,"
                " deadline = excluded.deadline, exempt_reason = excluded.exempt_reason,"
                " exempt_until = excluded.exempt_until, uid = coalesce(accounts.uid, excluded.uid)",
                (user, str(c.state), now, now, c.deadline, c.exempt_reason, c.exempt_until, c.uid),
            )
            if c.erase:
                await db.execute(
                    (
                        b"UPDATE accounts SET secret = NULL, last_step = NULL, enrolled_at = NULL,"
                        b" kind = CASE WHEN kind = 'email' THEN 'totp' ELSE kind END"
                        b' WHERE "user" = %s'
                    ),
                    (user,),
                )
                await db.execute('DELETE FROM enrolments WHERE "user" = %s', (user,))
                await db.execute('DELETE FROM recovery_codes WHERE "user" = %s', (user,))

        await self._run(q)

    async def replace_recovery_codes(self, user: str, digests: Sequence[bytes], now: float) -> None:
        async def q(db: Conn) -> None:
            await _replace_codes(db, user, digests, now)

        await self._run(q)

    async def use_recovery_code(
        self, user: str, digest: bytes, now: float, login: Site | None
    ) -> int | None:
        async def q(db: Conn) -> int | None:
            # a parallel DELETE of the same row waits for this one, then finds it gone
            cur = await db.execute(
                'DELETE FROM recovery_codes WHERE "user" = %s AND digest = %s AND EXISTS'
                " (SELECT 1 FROM accounts WHERE \"user\" = %s AND state = 'active')",
                (user, digest, user),
            )
            if cur.rowcount != 1:
                return None
            if login is not None:
                await db.execute(
                    "UPDATE accounts SET last_verified_at = %s, last_rhost = %s, updated_at = %s"
                    ' WHERE "user" = %s',
                    (now, login.rhost, now, user),
                )
                await db.execute(
                    'INSERT INTO logins ("user", at, service, rhost, method)'
                    " VALUES (%s, %s, %s, %s, 'recovery')",
                    (user, now, login.service, login.rhost),
                )
            return await _codes_left(db, user)

        return await self._run(q)

    async def recovery_codes_left(self, user: str) -> int:
        async def q(db: Conn) -> int:
            return await _codes_left(db, user)

        return await self._run(q)

    async def accounts(self) -> list[tuple[Account, Counter]]:
        async def q(db: Conn) -> list[tuple[Account, Counter]]:
            cur = await db.execute(
                _SELECT_ACCOUNTS_WITH_LOCKS,
                (ACCOUNT_SOURCE,),
            )
            n = _N_ACCOUNT_COLUMNS
            return [
                (account_from_row(r[:n]), counter_from_row(r[n:])) for r in await cur.fetchall()
            ]

        return await self._run(q)

    async def history(self, user: str, limit: int) -> list[Login]:
        async def q(db: Conn) -> list[Login]:
            cur = await db.execute(
                'SELECT at, service, rhost, method FROM logins WHERE "user" = %s'
                " ORDER BY at DESC, id DESC LIMIT %s",
                (user, limit),
            )
            return [Login(*r) for r in await cur.fetchall()]

        return await self._run(q)

    async def get_guard(self, user: str, source: str) -> GuardState:
        async def q(db: Conn) -> GuardState:
            cur = await db.execute(
                "SELECT source, failures, first_at, until, total FROM guard"
                ' WHERE "user" = %s AND source IN (%s, %s)',
                (user, ACCOUNT_SOURCE, source),
            )
            found = {r[0]: counter_from_row(r[1:]) for r in await cur.fetchall()}
            return GuardState(found.get(ACCOUNT_SOURCE, Counter()), found.get(source, Counter()))

        return await self._run(q)

    async def put_guard(self, user: str, source: str, state: GuardState) -> None:
        async def q(db: Conn) -> None:
            await _write_guard(db, user, source, state)

        await self._run(q)

    async def update_guard(
        self, user: str, source: str, change: Callable[[GuardState], GuardState]
    ) -> GuardState:
        async def q(db: Conn) -> GuardState:
            # A row that does not exist cannot be locked: make both exist (zeros, which
            # _write_guard deletes again), then lock them, in one order for everyone, so
            # that a daemon on another host counting for this user waits its turn.
            await db.execute(
                'INSERT INTO guard ("user", source, failures, first_at, until, total)'
                " VALUES (%s, %s, 0, 0, 0, 0), (%s, %s, 0, 0, 0, 0) ON CONFLICT DO NOTHING",
                (user, ACCOUNT_SOURCE, user, source),
            )
            cur = await db.execute(
                "SELECT source, failures, first_at, until, total FROM guard"
                ' WHERE "user" = %s AND source IN (%s, %s) ORDER BY source FOR UPDATE',
                (user, ACCOUNT_SOURCE, source),
            )
            found = {r[0]: counter_from_row(r[1:]) for r in await cur.fetchall()}
            new = change(
                GuardState(found.get(ACCOUNT_SOURCE, Counter()), found.get(source, Counter()))
            )
            await _write_guard(db, user, source, new)
            return new

        return await self._run(q)

    async def source_blocks(self, now: float, user: str | None = None) -> list[SourceBlock]:
        async def q(db: Conn) -> list[SourceBlock]:
            cur = await db.execute(
                'SELECT "user", source, until FROM guard WHERE source <> %s AND until > %s'
                ' AND (%s::text IS NULL OR "user" = %s) ORDER BY "user", source',
                (ACCOUNT_SOURCE, now, user, user),
            )
            return [SourceBlock(u, src, float(t)) for u, src, t in await cur.fetchall()]

        return await self._run(q)

    async def clear_guard(self, user: str) -> bool:
        async def q(db: Conn) -> bool:
            cur = await db.execute('DELETE FROM guard WHERE "user" = %s', (user,))
            return cur.rowcount > 0

        return await self._run(q)

    async def spellings(self, user: str) -> list[str]:
        async def q(db: Conn) -> list[str]:
            cur = await db.execute(
                'SELECT "user" FROM accounts'
                ' WHERE lower("user" COLLATE "C") = lower(%s::text COLLATE "C")'
                ' UNION SELECT "user" FROM enrolments'
                ' WHERE lower("user" COLLATE "C") = lower(%s::text COLLATE "C")',
                (user, user),
            )
            return sorted(str(r[0]) for r in await cur.fetchall())

        return await self._run(q)

    async def bind_uid(self, user: str, uid: int) -> None:
        async def q(db: Conn) -> None:
            for table in ("accounts", "enrolments"):
                await db.execute(
                    f'UPDATE {table} SET uid = %s WHERE "user" = %s AND uid IS NULL'.encode(),  # noqa: S608
                    (uid, user),
                )

        await self._run(q)

    async def forget(self, user: str) -> bool:
        async def q(db: Conn) -> bool:
            gone = 0
            for table in USER_TABLES:
                sql = f'DELETE FROM {table} WHERE "user" = %s'  # noqa: S608 (constant names)
                gone += (await db.execute(sql.encode(), (user,))).rowcount
            return gone > 0

        return await self._run(q)

    async def get_address(self, user: str) -> Address | None:
        async def q(db: Conn) -> Address | None:
            cur = await db.execute(
                'SELECT "user", address, confirmed_at, uid FROM addresses WHERE "user" = %s',
                (user,),
            )
            row = await cur.fetchone()
            return None if row is None else Address(*row)

        return await self._run(q)

    async def addresses(self) -> dict[str, Address]:
        async def q(db: Conn) -> dict[str, Address]:
            cur = await db.execute('SELECT "user", address, confirmed_at, uid FROM addresses')
            return {r[0]: Address(*r) for r in await cur.fetchall()}

        return await self._run(q)

    async def set_address(self, address: Address, now: float) -> None:
        a = address

        async def q(db: Conn) -> None:
            await db.execute(
                'INSERT INTO addresses ("user", address, confirmed_at, uid, updated_at)'
                ' VALUES (%s, %s, %s, %s, %s) ON CONFLICT ("user") DO UPDATE SET'
                " address = excluded.address, confirmed_at = excluded.confirmed_at,"
                " uid = excluded.uid, updated_at = excluded.updated_at",
                (a.user, a.address, a.confirmed_at, a.uid, now),
            )
            await db.execute('UPDATE email_codes SET digest = NULL WHERE "user" = %s', (a.user,))

        await self._run(q)

    async def confirm_address(self, user: str, address: str, now: float) -> bool:
        async def q(db: Conn) -> bool:
            cur = await db.execute(
                "UPDATE addresses SET confirmed_at = %s, updated_at = %s"
                ' WHERE "user" = %s AND address = %s',
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
        async def q(db: Conn) -> bool:
            cur = await db.execute(
                'INSERT INTO email_codes ("user", digest, purpose, expires_at, sent_at)'
                ' VALUES (%s, %s, %s, %s, %s) ON CONFLICT ("user") DO UPDATE SET'
                " digest = excluded.digest, purpose = excluded.purpose,"
                " expires_at = excluded.expires_at, sent_at = excluded.sent_at"
                " WHERE email_codes.sent_at <= %s",
                (user, digest, str(purpose), expires_at, now, now - interval),
            )
            return cur.rowcount == 1

        return await self._run(q)

    async def take_email_code(
        self, user: str, digest: bytes, purpose: CodePurpose, now: float, login: Site | None
    ) -> bool:
        method = "email_recovery" if purpose is CodePurpose.RECOVERY else "email"

        async def q(db: Conn) -> bool:
            cur = await db.execute(
                "UPDATE email_codes SET digest = NULL"
                ' WHERE "user" = %s AND digest = %s AND purpose = %s AND expires_at > %s',
                (user, digest, str(purpose), now),
            )
            if cur.rowcount == 1 and login is not None:
                await db.execute(
                    "UPDATE accounts SET last_verified_at = %s, last_rhost = %s,"
                    ' updated_at = %s WHERE "user" = %s',
                    (now, login.rhost, now, user),
                )
                await db.execute(
                    'INSERT INTO logins ("user", at, service, rhost, method)'
                    " VALUES (%s, %s, %s, %s, %s)",
                    (user, now, login.service, login.rhost, method),
                )
            return cur.rowcount == 1

        return await self._run(q)

    async def void_email_code(self, user: str, digest: bytes) -> None:
        async def q(db: Conn) -> None:
            await db.execute(
                'DELETE FROM email_codes WHERE "user" = %s AND digest = %s', (user, digest)
            )

        await self._run(q)

    async def email_code_sent_at(self, user: str) -> float | None:
        async def q(db: Conn) -> float | None:
            cur = await db.execute('SELECT sent_at FROM email_codes WHERE "user" = %s', (user,))
            row = await cur.fetchone()
            return None if row is None else float(row[0])

        return await self._run(q)

    async def activate_email(self, user: str, uid: int | None, now: float) -> None:
        async def q(db: Conn) -> None:
            await db.execute(
                'INSERT INTO accounts ("user", state, kind, enrolled_at, updated_at,'
                " state_changed_at, uid) VALUES (%s, 'active', 'email', %s, %s, %s, %s)"
                " ON CONFLICT (\"user\") DO UPDATE SET state = 'active', kind = 'email',"
                " secret = NULL, last_step = NULL, clock_offset = 0,"
                " enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at,"
                " state_changed_at = excluded.state_changed_at, deadline = NULL,"
                " exempt_reason = NULL, exempt_until = NULL,"
                " uid = coalesce(accounts.uid, excluded.uid)",
                (user, now, now, now, uid),
            )
            await db.execute('DELETE FROM enrolments WHERE "user" = %s', (user,))

        await self._run(q)

    async def get_key_check(self) -> bytes | None:
        async def q(db: Conn) -> bytes | None:
            cur = await db.execute("SELECT value FROM meta WHERE key = 'key_check'")
            row = await cur.fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def set_key_check(self, value: bytes) -> None:
        async def q(db: Conn) -> None:
            await db.execute(
                "INSERT INTO meta VALUES ('key_check', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (value,),
            )

        await self._run(q)

    async def any_sealed_secret(self) -> tuple[str, bytes] | None:
        async def q(db: Conn) -> tuple[str, bytes] | None:
            cur = await db.execute(
                'SELECT "user", secret FROM accounts WHERE secret IS NOT NULL UNION ALL'
                ' SELECT "user", secret FROM enrolments LIMIT 1'
            )
            row = await cur.fetchone()
            return None if row is None else (str(row[0]), bytes(row[1]))

        return await self._run(q)

    async def list_accounts(self) -> dict[str, str]:
        async def q(db: Conn) -> dict[str, str]:
            # An enrolment still pending counts only for a user who has no account yet.
            cur = await db.execute('SELECT "user" FROM enrolments')
            found = {str(user): "pending" for (user,) in await cur.fetchall()}
            cur = await db.execute('SELECT "user", state FROM accounts')
            found.update((str(user), str(state)) for user, state in await cur.fetchall())
            return found

        return await self._run(q)

    async def is_empty(self) -> bool:
        async def q(db: Conn) -> bool:
            return not any([await _rows_in(db, t) for t in COPIED_TABLES if t != "meta"])

        return await self._run(q)

    async def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        async def q(db: Conn) -> dict[str, list[tuple[Any, ...]]]:
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            found = {}
            for table, columns in COPIED_TABLES.items():
                sql = f"SELECT {_names(columns)} FROM {table}"  # noqa: S608 (constant names)
                rows = await (await db.execute(sql.encode())).fetchall()
                found[table] = [portable_row(table, r) for r in rows]
            return found

        return await self._run(q)

    async def import_rows(self, rows: dict[str, list[tuple[Any, ...]]], *, replace: bool) -> None:
        async def q(db: Conn) -> None:
            if not replace and any([await _rows_in(db, t) for t in COPIED_TABLES if t != "meta"]):
                raise StoreError(NOT_EMPTY.format(where=self._where))
            for table, columns in COPIED_TABLES.items():
                await db.execute(f"DELETE FROM {table}".encode())  # noqa: S608 (constant names)
                marks = ", ".join(["%s"] * len(columns))
                sql = f"INSERT INTO {table} ({_names(columns)}) VALUES ({marks})"  # noqa: S608
                async with db.cursor() as cur:
                    await cur.executemany(sql.encode(), rows.get(table, []))

        await self._run(q)

    shared = True

    async def audit_append(self, host: str, records: Sequence[AuditRow]) -> list[int]:
        async def q(db: Conn) -> list[int]:
            cur = await db.execute(
                'INSERT INTO audit_records (host, seq, at, event, "user", line)'
                " SELECT %s, * FROM unnest(%s::bigint[], %s::float8[], %s::text[],"
                " %s::text[], %s::text[]) ON CONFLICT DO NOTHING RETURNING seq",
                (
                    host,
                    [r.seq for r in records],
                    [r.at for r in records],
                    [r.event for r in records],
                    [r.user for r in records],
                    [r.line for r in records],
                ),
            )
            added = {int(seq) for (seq,) in await cur.fetchall()}
            ours = {r.seq: r.line for r in records if r.seq not in added}
            if not ours:
                return []
            cur = await db.execute(
                "SELECT seq, line FROM audit_records WHERE host = %s AND seq = ANY(%s)",
                (host, list(ours)),
            )
            return sorted(int(seq) for seq, line in await cur.fetchall() if line != ours[seq])

        return await self._run(q)

    async def audit_last_seq(self, host: str) -> int:
        async def q(db: Conn) -> int:
            cur = await db.execute("SELECT max(seq) FROM audit_records WHERE host = %s", (host,))
            row = await cur.fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

        return await self._run(q)

    async def audit_lines(
        self, since: float | None, until: float | None, fields: Mapping[str, str]
    ) -> AsyncIterator[str]:
        # The filters are fixed SQL with parameters: a field is matched in the record
        # itself (line::jsonb), so every field a record has can be asked for.
        where = ["(%s::float8 IS NULL OR at >= %s)", "(%s::float8 IS NULL OR at < %s)"]
        params: list[Any] = [since, since, until, until]
        for name, value in sorted(fields.items()):
            where.append("line::jsonb ->> %s = %s")
            params += [name, value]
        sql = (
            f"SELECT line FROM audit_records WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY at, host, seq"
        )
        async for (line,) in self._stream(sql.encode(), params):
            yield str(line)

    async def audit_chain(self, host: str) -> AsyncIterator[tuple[int, str]]:
        sql = b"SELECT seq, line FROM audit_records WHERE host = %s ORDER BY seq"
        async for seq, line in self._stream(sql, [host]):
            yield int(seq), str(line)

    async def audit_hosts(self) -> list[str]:
        async def q(db: Conn) -> list[str]:
            cur = await db.execute("SELECT DISTINCT host FROM audit_records ORDER BY host")
            return [str(r[0]) for r in await cur.fetchall()]

        return await self._run(q)

    async def _stream(self, sql: bytes, params: Sequence[Any]) -> AsyncIterator[tuple[Any, ...]]:
        """Rows of a long read in batches (a server-side cursor), never all in memory."""
        if self._pool is None:
            raise StoreError("the store is closed")
        try:
            async with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor(name="mfad_stream") as cur,
            ):
                await cur.execute(sql, params)
                while rows := await cur.fetchmany(1000):
                    for row in rows:
                        yield row
        except psycopg.Error as exc:
            raise StoreError(f"store {self._where}: {_scrub(exc, self._dsn)}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _replace_codes(db: Conn, user: str, digests: Sequence[bytes], now: float) -> None:
    await db.execute('DELETE FROM recovery_codes WHERE "user" = %s', (user,))
    if digests:
        async with db.cursor() as cur:
            await cur.executemany(
                'INSERT INTO recovery_codes ("user", digest, created_at) VALUES (%s, %s, %s)',
                [(user, d, now) for d in digests],
            )


async def _codes_left(db: Conn, user: str) -> int:
    cur = await db.execute('SELECT count(*) FROM recovery_codes WHERE "user" = %s', (user,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


class _Dropped(Exception):
    """The connection broke under the work: the pool discards it, the work runs again."""


def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)  # "user" is a reserved word


async def _rows_in(db: Conn, table: str) -> bool:
    cur = await db.execute(f"SELECT 1 FROM {table} LIMIT 1".encode())  # noqa: S608
    return await cur.fetchone() is not None


def _scrub(exc: BaseException, dsn: str) -> str:
    """The error's text with the DSN's password (if any) blotted out, to the last trace."""
    text = str(exc).strip() or type(exc).__name__
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return " ".join(text.split())

"""The Store contract, run against every backend: SQLite and PostgreSQL.

Each test opens stores on a fresh database (an SQLite file in a temp dir, or a
new database on the private PostgreSQL cluster of tests/pgcluster.py) and checks
one promise of store.Store directly, without a daemon. Where a promise is about
parallel use (replay protection, spending a recovery code), several stores on
the one database stand for several hosts sharing it.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from pgcluster import PgCluster

from mfad import pgstore as pgstore_module
from mfad import store as store_module
from mfad.errors import StoreError
from mfad.model import (
    Address,
    CodePurpose,
    Counter,
    GuardState,
    Kind,
    PendingEnrolment,
    Site,
    SourceBlock,
    State,
    StateChange,
    TokenParams,
)
from mfad.pgstore import SCHEMA_VERSION, PostgresStore
from mfad.store import SqliteStore, Store

pytest_plugins = ["pgcluster"]

HOSTS = 3  # stores on one database, standing for daemons on several hosts
SSH = Site("sshd", "192.0.2.7")


class Backend:
    """Opens stores on one fresh database, and can tamper with its schema version."""

    def __init__(self, name: str, tmp: Path, dsn: str | None) -> None:
        self.name = name
        self.path = tmp / "mfa.db"
        self.dsn = dsn

    async def open(self) -> Store:
        if self.dsn is None:
            return await SqliteStore.open(self.path)
        return await PostgresStore.open(self.dsn)

    def set_schema_version(self, version: int) -> None:
        if self.dsn is None:
            import sqlite3

            db = sqlite3.connect(self.path)
            db.execute(f"PRAGMA user_version = {version:d}")
            db.close()
        else:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("UPDATE mfad_schema SET version = %s", (version,))

    def run(self, body: Callable[[list[Store]], Awaitable[None]], hosts: int = 1) -> None:
        """Open `hosts` stores on the database, run `body` with them, close them all."""

        async def main() -> None:
            stores = [await self.open() for _ in range(hosts)]
            try:
                await body(stores)
            finally:
                for store in stores:
                    await store.close()

        asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    dsn = None
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        dsn = cluster.create_database()
    return Backend(request.param, tmp_path, dsn)


def pending(
    user: str = "alice", secret: bytes = b"sealed-1", uid: int | None = 1000
) -> PendingEnrolment:
    return PendingEnrolment(
        user,
        secret,
        TokenParams("SHA256", 8, 60),
        10.0,
        uid=uid,
        expires_at=610.0,
        origin="login:x",
    )


async def enrolled(store: Store, user: str = "alice", step: int = 100, codes: int = 0) -> None:
    p = pending(user)
    await store.begin_enrolment(p)
    await store.activate(p, step, 20.0, [f"code-{i}".encode() for i in range(codes)])


def test_an_enrolment_is_held_aside_until_activated(backend: Backend) -> None:
    """begin_enrolment keeps a secret aside (replacing an older one) without making an
    account; activate turns it into an active token with its params, uid, confirming
    step and recovery codes, its confirmation the last verification, and the pending
    enrolment is gone."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await s.begin_enrolment(pending(secret=b"old"))
        await s.begin_enrolment(pending(secret=b"new"))
        assert await s.get_pending("alice") == pending(secret=b"new")
        assert await s.get_account("alice") is None
        assert await s.list_accounts() == {"alice": "pending"}
        assert await s.any_sealed_secret() == ("alice", b"new")

        await s.activate(pending(secret=b"new"), 1234, 20.0, [b"d1", b"d2"])
        a = await s.get_account("alice")
        assert a is not None
        assert (a.state, a.sealed_secret, a.params) == (
            State.ACTIVE,
            b"new",
            TokenParams("SHA256", 8, 60),
        )
        assert (a.enrolled_at, a.last_step, a.clock_offset, a.uid) == (20.0, 1234, 0, 1000)
        assert (a.last_verified_at, a.last_rhost) == (20.0, None)
        assert await s.get_pending("alice") is None
        assert await s.recovery_codes_left("alice") == 2
        assert await s.list_accounts() == {"alice": "active"}
        assert await s.get_pending("nobody") is None
        assert await s.get_account("nobody") is None

    backend.run(body)


def test_consume_step_refuses_the_same_or_an_earlier_step(backend: Backend) -> None:
    """A step is used once: the confirming step, an earlier one and a step used by a
    login are refused; a later one succeeds. A login is recorded in the history with
    when and from where; a mere proof (no login) moves the step but records nothing.
    Users that are not active, or unknown, never succeed."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s, step=100)
        assert not await s.consume_step("alice", 100, 0, 30.0, SSH)
        assert not await s.consume_step("alice", 99, 0, 30.0, SSH)
        assert await s.consume_step("alice", 101, 1, 31.0, SSH)
        assert not await s.consume_step("alice", 101, 0, 32.0, SSH)
        assert await s.consume_step("alice", 102, 0, 40.0, None)
        a = await s.get_account("alice")
        assert a is not None
        assert (a.last_step, a.clock_offset, a.last_verified_at, a.last_rhost) == (
            102,
            0,
            31.0,
            SSH.rhost,
        )
        history = await s.history("alice", 10)
        assert [(h.at, h.service, h.rhost, h.method) for h in history] == [
            (31.0, "sshd", SSH.rhost, "totp")
        ]
        await s.set_state("alice", StateChange(State.SUSPENDED), 50.0)
        assert not await s.consume_step("alice", 200, 0, 50.0, SSH)
        assert not await s.consume_step("nobody", 200, 0, 50.0, SSH)

    backend.run(body)


def test_fifty_parallel_logins_with_one_step_give_exactly_one_success(backend: Backend) -> None:
    """50 consume_step calls for one step at once, spread over several stores on the one
    database (several hosts), give exactly one True, and one login in the history."""

    async def body(stores: list[Store]) -> None:
        await enrolled(stores[0], step=100)
        results = await asyncio.gather(
            *(stores[i % HOSTS].consume_step("alice", 101, 0, 30.0, SSH) for i in range(50))
        )
        assert results.count(True) == 1
        assert len(await stores[1].history("alice", 100)) == 1

    backend.run(body, hosts=HOSTS)


HOTP = TokenParams("SHA1", 6, 30, Kind.HOTP)


def test_an_hotp_counter_is_used_once_and_kept_with_its_kind(backend: Backend) -> None:
    """An HOTP token is activated with no counter used (or with the last one an import
    says was used); its kind reads back; a counter at or below the last one used is
    refused, a later one taken, and logins go into the history as "hotp". A token made
    TOTP again after a reset reads back as TOTP."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        hw = PendingEnrolment("alice", b"sealed-hw", HOTP, 10.0, uid=1000)
        await s.activate(hw, None, 20.0, [b"d1"])
        a = await s.get_account("alice")
        assert a is not None
        assert (a.params, a.last_step, a.state) == (HOTP, None, State.ACTIVE)
        assert await s.consume_step("alice", 0, 0, 30.0, SSH)
        assert not await s.consume_step("alice", 0, 0, 31.0, SSH)
        assert await s.consume_step("alice", 7, 0, 32.0, SSH)
        assert not await s.consume_step("alice", 5, 0, 33.0, SSH)
        assert not await s.consume_step("alice", 7, 0, 34.0, SSH)
        history = await s.history("alice", 10)
        assert [h.method for h in history] == ["hotp", "hotp"]

        imported = PendingEnrolment("bob", b"sealed-imp", HOTP, 10.0, uid=1001)
        await s.activate(imported, 41, 20.0)
        assert not await s.consume_step("bob", 41, 0, 30.0, SSH)
        assert await s.consume_step("bob", 42, 0, 30.0, SSH)

        await s.set_state("alice", StateChange(State.PENDING, erase=True), 40.0)
        await s.activate(pending("alice"), 100, 50.0)
        again = await s.get_account("alice")
        assert again is not None and again.params == TokenParams("SHA256", 8, 60, Kind.TOTP)

    backend.run(body)


def test_fifty_parallel_logins_with_one_hotp_code_give_exactly_one_success(
    backend: Backend,
) -> None:
    """50 consume_step calls for one HOTP counter at once over several stores on one
    database give exactly one True: the counter moves atomically, as a time step does."""

    async def body(stores: list[Store]) -> None:
        hw = PendingEnrolment("alice", b"sealed-hw", HOTP, 10.0, uid=1000)
        await stores[0].activate(hw, 9, 20.0)
        results = await asyncio.gather(
            *(stores[i % HOSTS].consume_step("alice", 10, 0, 30.0, SSH) for i in range(50))
        )
        assert results.count(True) == 1
        a = await stores[2].get_account("alice")
        assert a is not None and a.last_step == 10

    backend.run(body, hosts=HOSTS)


def _old_schema_with_an_account(backend: Backend) -> None:
    """The schema as it was before HOTP (every migration but the last), one active row."""
    row = (
        'INSERT INTO accounts ("user", state, secret, updated_at, last_step)'
        " VALUES ('alice', 'active', {}, 1.0, 55)"
    )
    if backend.dsn is None:
        import sqlite3

        db = sqlite3.connect(backend.path)
        for number, script in enumerate(store_module._MIGRATIONS[:-1], start=1):
            db.executescript(script)
            db.execute(f"PRAGMA user_version = {number:d}")
        db.execute(row.format("?"), (b"sealed",))
        db.commit()
        db.close()
        return
    with psycopg.connect(backend.dsn, autocommit=True) as conn:
        for script in pgstore_module._MIGRATIONS[:-1]:
            conn.execute(script.encode())  # as mfad runs it: one script, one simple query
        conn.execute("CREATE TABLE mfad_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO mfad_schema VALUES (%s)", (SCHEMA_VERSION - 1,))
        conn.execute(row.format("%s").encode(), (b"sealed",))


def test_a_store_from_before_hotp_migrates_its_tokens_to_totp(backend: Backend) -> None:
    """Opening a store written before token kinds existed migrates it forward: its tokens
    read back as TOTP with their last step, and an HOTP token can be stored after."""
    _old_schema_with_an_account(backend)

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        a = await s.get_account("alice")
        assert a is not None and (a.params.kind, a.last_step) == (Kind.TOTP, 55)
        await s.activate(PendingEnrolment("bob", b"hw", HOTP, 1.0), None, 2.0)
        b = await s.get_account("bob")
        assert b is not None and b.params.kind is Kind.HOTP

    backend.run(body)


def test_set_state_creates_moves_and_erases(backend: Backend) -> None:
    """set_state creates a row for a new user (with its uid and deadline), moves an
    account between states keeping its token and the uid it has, and with erase drops
    secret, step, pending enrolment and recovery codes while the history stays."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await s.set_state("bob", StateChange(State.PENDING, deadline=99.0, uid=1001), 5.0)
        b = await s.get_account("bob")
        assert b is not None
        assert (b.state, b.deadline, b.uid, b.sealed_secret, b.state_changed_at) == (
            State.PENDING,
            99.0,
            1001,
            None,
            5.0,
        )

        await enrolled(s, codes=3)
        assert await s.consume_step("alice", 101, 0, 30.0, SSH)
        await s.set_state(
            "alice",
            StateChange(State.EXEMPT, exempt_reason="travel", exempt_until=900.0, uid=7),
            40.0,
        )
        a = await s.get_account("alice")
        assert a is not None
        assert (a.state, a.exempt_reason, a.exempt_until, a.uid) == (
            State.EXEMPT,
            "travel",
            900.0,
            1000,
        )
        assert a.sealed_secret == b"sealed-1"

        await s.begin_enrolment(pending())
        await s.set_state("alice", StateChange(State.DISABLED, erase=True), 50.0)
        a = await s.get_account("alice")
        assert a is not None
        assert (a.state, a.sealed_secret, a.last_step, a.enrolled_at) == (
            State.DISABLED,
            None,
            None,
            None,
        )
        assert (a.exempt_reason, a.exempt_until) == (None, None)
        assert await s.get_pending("alice") is None
        assert await s.recovery_codes_left("alice") == 0
        assert len(await s.history("alice", 10)) == 1
        assert await s.list_accounts() == {"alice": "disabled", "bob": "pending"}
        assert await s.any_sealed_secret() is None

    backend.run(body)


def test_a_recovery_code_is_spent_once_under_parallel_use(backend: Backend) -> None:
    """20 parallel uses of one recovery code over several stores give exactly one match
    (the number left), the rest None; a wrong code, or a user who is not active, gets
    None; a use with a login is in the history, and replacing the codes resets them."""

    async def body(stores: list[Store]) -> None:
        s = stores[0]
        await enrolled(s, codes=3)
        results = await asyncio.gather(
            *(stores[i % HOSTS].use_recovery_code("alice", b"code-1", 30.0, SSH) for i in range(20))
        )
        assert sorted(results, key=str) == [2] + [None] * 19
        assert await s.use_recovery_code("alice", b"wrong", 31.0, SSH) is None
        assert await s.use_recovery_code("alice", b"code-2", 32.0, None) == 1
        assert [h.method for h in await s.history("alice", 10)] == ["recovery"]
        a = await s.get_account("alice")
        assert a is not None
        assert (a.last_verified_at, a.last_rhost) == (30.0, SSH.rhost)

        await s.replace_recovery_codes("alice", [b"n1", b"n2", b"n3", b"n4"], 40.0)
        assert await s.recovery_codes_left("alice") == 4
        assert await s.use_recovery_code("alice", b"code-0", 41.0, SSH) is None
        await s.set_state("alice", StateChange(State.SUSPENDED), 42.0)
        assert await s.use_recovery_code("alice", b"n1", 43.0, SSH) is None
        assert await s.recovery_codes_left("alice") == 4

    backend.run(body, hosts=HOSTS)


def test_guard_counters_round_trip_including_a_lock_until_unlocked(backend: Backend) -> None:
    """put_guard/get_guard keep both counters exactly, a lock until an admin unlocks
    (until = inf) included, for enrolled and unknown names alike; accounts() shows the
    account-wide counter; a zero counter is removed; clear_guard forgets every counter
    of a user (True), and False when there was none."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s)
        locked = GuardState(Counter(5, 100.5, math.inf, 12), Counter(2, 101.25, 160.0, 2))
        await s.put_guard("alice", "rhost:h1", locked)
        assert await s.get_guard("alice", "rhost:h1") == locked
        assert await s.get_guard("alice", "rhost:h2") == GuardState(locked.account, Counter())
        [(account, counter)] = await s.accounts()
        assert (account.user, counter) == ("alice", locked.account)
        assert math.isinf(counter.until)

        await s.put_guard("ghost", "rhost:h1", GuardState(Counter(), Counter(1, 5.0, 0.0, 1)))
        assert await s.get_guard("ghost", "rhost:h1") == GuardState(
            Counter(), Counter(1, 5.0, 0.0, 1)
        )

        await s.put_guard("alice", "rhost:h1", GuardState(locked.account, Counter()))
        assert await s.get_guard("alice", "rhost:h1") == GuardState(locked.account, Counter())
        assert await s.clear_guard("alice")
        assert await s.get_guard("alice", "rhost:h1") == GuardState(Counter(), Counter())
        assert not await s.clear_guard("alice")
        [(_, counter)] = await s.accounts()
        assert counter == Counter()

    backend.run(body)


def test_spellings_bind_uid_and_forget(backend: Backend) -> None:
    """spellings finds accounts and pending enrolments equal but for ASCII case (not
    other letters' case); bind_uid sets a uid only where none is recorded; forget removes
    every row of one spelling (account, enrolment, codes, counters, history), True once,
    then False, and leaves other spellings alone."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s, "ALICE", codes=2)
        assert await s.consume_step("ALICE", 101, 0, 30.0, SSH)
        await s.put_guard("ALICE", "r", GuardState(Counter(1, 1.0, 0.0, 1), Counter()))
        await s.begin_enrolment(pending("Alice", uid=None))
        await s.set_state("\u00c9mile", StateChange(State.PENDING), 1.0)
        await s.set_state("Zed", StateChange(State.PENDING), 1.0)
        assert await s.spellings("alice") == ["ALICE", "Alice"]
        assert await s.spellings("ALICE") == ["ALICE", "Alice"]
        assert await s.spellings("\u00e9mile") == []
        assert await s.spellings("\u00c9MILE") == ["\u00c9mile"]
        assert await s.spellings("bob") == []
        # byte order of names, as SQLite sorts them
        assert [a.user for a, _ in await s.accounts()] == ["ALICE", "Zed", "\u00c9mile"]

        await s.bind_uid("Alice", 2000)
        await s.bind_uid("ALICE", 2000)  # already bound to 1000: kept
        p = await s.get_pending("Alice")
        a = await s.get_account("ALICE")
        assert p is not None and a is not None
        assert (p.uid, a.uid) == (2000, 1000)

        assert await s.forget("ALICE")
        assert await s.get_account("ALICE") is None
        assert await s.history("ALICE", 10) == []
        assert await s.recovery_codes_left("ALICE") == 0
        assert await s.get_guard("ALICE", "r") == GuardState(Counter(), Counter())
        assert not await s.forget("ALICE")
        assert await s.spellings("alice") == ["Alice"]
        assert await s.forget("Alice")
        assert await s.list_accounts() == {"Zed": "pending", "\u00c9mile": "pending"}

    backend.run(body)


def test_history_is_newest_first_and_limited(backend: Backend) -> None:
    """history gives a user's second-factor logins newest first, at most `limit`."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s, step=100)
        for i in range(5):
            assert await s.consume_step("alice", 101 + i, 0, 30.0 + i, Site("sshd", f"h{i}"))
        assert [h.rhost for h in await s.history("alice", 3)] == ["h4", "h3", "h2"]

    backend.run(body)


def test_the_key_check_value_is_kept_and_replaced(backend: Backend) -> None:
    """get_key_check is None on a new store; set_key_check records a value, a second
    one replaces it, and it survives reopening the store."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        assert await s.get_key_check() is None
        await s.set_key_check(b"\x00check-1")
        await s.set_key_check(b"\x00check-2")
        assert await s.get_key_check() == b"\x00check-2"

    async def again(stores: list[Store]) -> None:
        assert await stores[0].get_key_check() == b"\x00check-2"

    backend.run(body)
    backend.run(again)


def test_a_store_with_a_newer_schema_is_refused(backend: Backend) -> None:
    """Reopening keeps the data (migrations run once); a store whose schema version is
    newer than this code knows is refused with a StoreError that says to upgrade."""
    backend.run(lambda stores: enrolled(stores[0]))
    backend.set_schema_version(99)

    async def reopen() -> None:
        await backend.open()

    with pytest.raises(StoreError, match=r"schema version 99, newer .* upgrade pam-mfa"):
        asyncio.run(reopen())


def test_a_store_reopened_keeps_its_data(backend: Backend) -> None:
    """Opening a store again (the daemon restarting) migrates nothing and loses nothing."""
    backend.run(lambda stores: enrolled(stores[0], codes=2))

    async def again(stores: list[Store]) -> None:
        a = await stores[0].get_account("alice")
        assert a is not None and a.state is State.ACTIVE
        assert await stores[0].recovery_codes_left("alice") == 2

    backend.run(again)


def test_what_one_store_exports_another_imports_whole(
    backend: Backend, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """export_rows gives every row of every copied table (a lock until unlocked as inf);
    import_rows into an empty store of either backend gives back the same rows; a store
    that holds accounts is refused unless `replace`, and then holds only the new rows."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s, "alice", codes=3)
        await s.begin_enrolment(pending("bob"))
        await s.consume_step("alice", 101, 1, 30.0, SSH)
        forever = GuardState(Counter(5, 1.0, math.inf, 7), Counter(2, 1.0, 50.0, 2))
        await s.put_guard("alice", "192.0.2.7", forever)
        await s.set_key_check(b"check")
        await s.set_address(Address("alice", "alice@example.com", 3.0, 1000), 3.0)
        await s.put_email_code("alice", b"d", CodePurpose.LOGIN, 400.0, 4.0, 60.0)
        rows = await s.export_rows()
        assert {t: len(r) for t, r in rows.items()} == {
            "accounts": 1,
            "enrolments": 1,
            "recovery_codes": 3,
            "logins": 1,
            "guard": 2,
            "meta": 1,
            "addresses": 1,
            "email_codes": 1,
        }
        for target in (SqliteStore.open(tmp_path / "copy.db"), PostgresStore.open(fresh)):
            copy = await target
            try:
                assert await copy.is_empty()
                await copy.import_rows(rows, replace=False)
                assert await copy.export_rows() == rows
                assert await copy.get_guard("alice", "192.0.2.7") == forever
                with pytest.raises(StoreError, match="--replace"):
                    await copy.import_rows(rows, replace=False)
                await copy.import_rows({"meta": rows["meta"]}, replace=True)
                assert await copy.is_empty()
            finally:
                await copy.close()

    fresh = pg_cluster.create_database()
    backend.run(body)


def test_an_address_is_set_confirmed_replaced_and_forgotten(backend: Backend) -> None:
    """An address reads back as set; confirming names the address it confirms, so a
    confirmation for a replaced address changes nothing; forget removes it."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        assert await s.get_address("alice") is None
        await s.set_address(Address("alice", "a@example.com", None, 1000), 1.0)
        assert await s.get_address("alice") == Address("alice", "a@example.com", None, 1000)
        assert not await s.confirm_address("alice", "old@example.com", 2.0)
        assert await s.confirm_address("alice", "a@example.com", 2.0)
        found = await s.get_address("alice")
        assert found is not None and found.confirmed and found.confirmed_at == 2.0
        assert await s.addresses() == {"alice": found}
        await s.activate_email("alice", 1000, 3.0)
        assert await s.forget("alice")
        assert await s.get_address("alice") is None

    backend.run(body)


def test_a_mailed_code_is_spent_once_and_not_after_it_expires(backend: Backend) -> None:
    """take_email_code accepts the outstanding digest for its purpose once, before its
    expiry, and records an email login; a new code replaces the last; another purpose,
    a late answer or a replaced address's code are refused."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await s.activate_email("alice", 1000, 1.0)
        a = await s.get_account("alice")
        assert a is not None and a.params.kind is Kind.EMAIL and a.state is State.ACTIVE
        assert a.sealed_secret is None and a.has_factor
        assert await s.put_email_code("alice", b"one", CodePurpose.LOGIN, 100.0, 10.0, 0.0)
        assert await s.put_email_code("alice", b"two", CodePurpose.LOGIN, 100.0, 11.0, 0.0)
        assert not await s.take_email_code("alice", b"one", CodePurpose.LOGIN, 12.0, SSH)
        assert not await s.take_email_code("alice", b"two", CodePurpose.RECOVERY, 12.0, SSH)
        assert not await s.take_email_code("alice", b"two", CodePurpose.LOGIN, 100.0, SSH)
        assert await s.take_email_code("alice", b"two", CodePurpose.LOGIN, 99.0, SSH)
        assert not await s.take_email_code("alice", b"two", CodePurpose.LOGIN, 99.0, SSH)
        [login] = await s.history("alice", 5)
        assert login.method == "email"
        assert await s.put_email_code("alice", b"three", CodePurpose.LOGIN, 300.0, 200.0, 0.0)
        await s.set_address(Address("alice", "new@example.com", 201.0), 201.0)
        assert not await s.take_email_code("alice", b"three", CodePurpose.LOGIN, 202.0, None)

    backend.run(body)


def test_mailing_is_rate_limited_per_user_across_hosts(backend: Backend) -> None:
    """Of 20 parallel put_email_code calls for one user on several stores, one is kept;
    another user is not held back; after the interval one more is kept, and a voided
    (undelivered) code frees the interval at once."""

    async def body(stores: list[Store]) -> None:
        results = await asyncio.gather(
            *(
                stores[i % HOSTS].put_email_code(
                    "alice", bytes([i]), CodePurpose.LOGIN, 400.0, 100.0, 60.0
                )
                for i in range(20)
            )
        )
        assert results.count(True) == 1
        assert await stores[0].email_code_sent_at("alice") == 100.0
        assert await stores[1].put_email_code("bob", b"b", CodePurpose.LOGIN, 400.0, 100.0, 60.0)
        assert not await stores[2].put_email_code(
            "alice", b"x", CodePurpose.LOGIN, 400.0, 159.0, 60.0
        )
        assert await stores[2].put_email_code("alice", b"y", CodePurpose.LOGIN, 400.0, 160.0, 60.0)
        await stores[0].void_email_code("alice", b"y")
        assert await stores[0].put_email_code("alice", b"z", CodePurpose.LOGIN, 400.0, 161.0, 60.0)

    backend.run(body, hosts=HOSTS)


def test_erasing_an_email_account_drops_the_method(backend: Backend) -> None:
    """Disabling (erase) an account on the email method leaves it asking for nothing: its
    kind is no longer email, so it has no factor; a token's kind is kept."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await s.activate_email("alice", 1000, 1.0)
        await s.set_state("alice", StateChange(State.DISABLED, erase=True), 2.0)
        a = await s.get_account("alice")
        assert a is not None and a.params.kind is Kind.TOTP and not a.has_factor
        await s.activate(PendingEnrolment("bob", b"hw", HOTP, 1.0), None, 2.0)
        await s.set_state("bob", StateChange(State.DISABLED, erase=True), 3.0)
        b = await s.get_account("bob")
        assert b is not None and b.params.kind is Kind.HOTP and not b.has_factor

    backend.run(body)


# PostgreSQL only: what SQLite's single file cannot show.


def test_daemons_starting_together_migrate_once(pg_cluster: PgCluster) -> None:
    """Several daemons opening one new database at once all succeed: the advisory lock
    lets one apply the schema while the others wait and then find it current."""
    dsn = pg_cluster.create_database()

    async def main() -> None:
        stores = await asyncio.gather(*(PostgresStore.open(dsn) for _ in range(6)))
        await enrolled(stores[0])
        assert await stores[5].get_account("alice") is not None
        for store in stores:
            await store.close()

    asyncio.run(main())
    with psycopg.connect(dsn) as conn:
        want = [(pgstore_module.SCHEMA_VERSION,)]
        assert conn.execute("SELECT version FROM mfad_schema").fetchall() == want


def test_an_unreachable_database_fails_with_a_store_error() -> None:
    """A DSN naming a socket directory with no server behind it gives a StoreError
    (promptly: the call returns) that names the database and never the password."""
    with tempfile.TemporaryDirectory() as empty:
        dsn = f"host={empty} dbname=mfa user=mfad password=hunter2-secret"

        async def main() -> None:
            await PostgresStore.open(dsn)

        with pytest.raises(StoreError) as caught:
            asyncio.run(main())
    message = str(caught.value)
    assert "cannot connect to PostgreSQL mfa on " in message
    assert empty in message
    assert "hunter2" not in message


def test_a_statement_stuck_behind_a_lock_fails_closed(pg_cluster: PgCluster) -> None:
    """A login whose row is locked elsewhere (another host's long transaction) waits no
    longer than the statement timeout, then fails with a StoreError (so the login fails
    closed) instead of stalling; the step is not used, and works once the lock is gone."""
    dsn = pg_cluster.create_database()

    async def main() -> None:
        store = await PostgresStore.open(dsn, statement_timeout=0.5)
        try:
            await enrolled(store)
            async with await psycopg.AsyncConnection.connect(dsn) as other:
                await other.execute("SELECT * FROM accounts FOR UPDATE")
                with pytest.raises(StoreError, match="took too long"):
                    await store.consume_step("alice", 101, 0, 30.0, SSH)
                await other.rollback()
            assert await store.consume_step("alice", 101, 0, 30.0, SSH)
        finally:
            await store.close()

    asyncio.run(main())


def test_counting_is_atomic_across_daemons(backend: Backend) -> None:
    """60 wrong codes counted at once through 3 stores on one database (3 daemons on 3
    hosts) are 60 in the end, on the account's counter and the source's: update_guard's
    read-modify-write is one atomic step, so no count is lost between daemons
    (lockout.Guard's per-user lock covers one daemon only)."""

    def one_more(state: GuardState) -> GuardState:
        return GuardState(
            Counter(state.account.failures + 1, 1.0, 0.0, state.account.total + 1),
            Counter(state.source.failures + 1, 1.0, 0.0, state.source.total + 1),
        )

    async def body(stores: list[Store]) -> None:
        await asyncio.gather(
            *(stores[i % 3].update_guard("alice", "host:h", one_more) for i in range(60))
        )
        final = await stores[0].get_guard("alice", "host:h")
        assert (final.account.failures, final.source.failures) == (60, 60)
        assert (final.account.total, final.source.total) == (60, 60)

    backend.run(body, hosts=3)


def test_enrolling_again_records_the_confirmation_as_the_last_verification(
    backend: Backend,
) -> None:
    """A new token confirmed from a remote host replaces the old token's last verification
    (time and host); one confirmed where no host is known leaves no host from before."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        await enrolled(s)
        assert await s.consume_step("alice", 200, 0, 30.0, SSH)
        await s.begin_enrolment(pending(secret=b"phone-2"))
        await s.activate(pending(secret=b"phone-2"), 300, 40.0, rhost="198.51.100.4")
        a = await s.get_account("alice")
        assert a is not None and (a.last_verified_at, a.last_rhost) == (40.0, "198.51.100.4")
        await s.begin_enrolment(pending(secret=b"phone-3"))
        await s.activate(pending(secret=b"phone-3"), 400, 50.0)
        a = await s.get_account("alice")
        assert a is not None and (a.last_verified_at, a.last_rhost) == (50.0, None)

    backend.run(body)


def test_source_blocks_lists_the_blocks_in_force(backend: Backend) -> None:
    """source_blocks names each (user, source) block whose time has not passed, by user and
    source, of one user or of everyone; an expired block, a source's count without a block
    and the account-wide lock are not source blocks; clear_guard lifts them."""

    async def body(stores: list[Store]) -> None:
        (s,) = stores
        account_lock = Counter(5, 10.0, math.inf, 5)
        await s.put_guard("bob", "host:h2", GuardState(account_lock, Counter(4, 10.0, 900.0, 4)))
        await s.put_guard("alice", "host:h1", GuardState(Counter(), Counter(4, 10.0, 900.0, 4)))
        await s.put_guard("alice", "local", GuardState(Counter(), Counter(4, 10.0, 50.0, 4)))
        await s.put_guard("alice", "uid:1000", GuardState(Counter(), Counter(1, 10.0, 0.0, 1)))

        assert await s.source_blocks(40.0) == [
            SourceBlock("alice", "host:h1", 900.0),
            SourceBlock("alice", "local", 50.0),
            SourceBlock("bob", "host:h2", 900.0),
        ]
        assert await s.source_blocks(60.0, "alice") == [SourceBlock("alice", "host:h1", 900.0)]
        assert await s.source_blocks(60.0, "carol") == []
        assert await s.clear_guard("alice")
        assert await s.source_blocks(60.0) == [SourceBlock("bob", "host:h2", 900.0)]

    backend.run(body)

"""Many hosts, one store: two real mfad daemons on one PostgreSQL database.

Each daemon stands for a host: its own sockets, audit log and process, the same
key file, one database (a private cluster, tests/pgcluster.py). A user enrolled
through one is enrolled on the other, a code used on one is refused on the
other, and wrong codes on both count against one account.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Daemon, MakeUser, running_daemon, totp_now
from pamtest import authenticate, write_service
from pgcluster import PgCluster
from wire import PamWire, start_payload

pytest_plugins = ["pgcluster"]


def _on(dsn: str, host: str = "host-a", **lockout: object) -> dict[str, object]:
    """Config overrides for a daemon on `dsn` that calls itself `host` in its records; one
    answer per login keeps counts simple."""
    return {
        "store": {"backend": "postgresql", "dsn": dsn},
        "lockout": {"delay": 0, **lockout},
        "login": {"max_attempts": 1},
        "audit": {"host": host},
    }


@pytest.fixture
def hosts(pg_cluster: PgCluster) -> Iterator[tuple[Daemon, Daemon, str]]:
    """Two daemons on one fresh database, sharing one key file; and the database's DSN."""
    dsn = pg_cluster.create_database()
    with running_daemon() as first, running_daemon() as second:
        first.restart(**_on(dsn, "host-a", source_deny=100))
        second.stop()
        shutil.copy(first.key_path, second.key_path)
        second.start(**_on(dsn, "host-b", source_deny=100))
        yield first, second, dsn


def _login(daemon: Daemon, user: str, code: str) -> list[str]:
    with PamWire(daemon.pam_socket) as wire:
        return [f.payload for f in wire.login(user, [code], service="sshd", rhost="192.0.2.5")]


def test_a_code_used_on_one_host_is_refused_on_the_other(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser, pam_module: Path
) -> None:
    """A user enrolled through one host logs in on the other through the real libpam and
    pam_mfa.so, and the code that logged in there is refused on the first host as
    already used (RFC 6238 5.2, across hosts)."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    assert second.request("status", user=user)["state"] == "active"
    code = totp_now(secret)
    services = second.tmp / "pam.d"
    write_service(services, "sshd", [f"auth required {pam_module} socket={second.pam_socket}"])
    assert authenticate(services, "sshd", user, [code], rhost="192.0.2.5").name == "PAM_SUCCESS"
    assert _login(first, user, code)[-1] == "M"
    refused = [r for r in first.audit() if r["event"] == "attempt" and r["user"] == user]
    assert [r["reason"] for r in refused] == ["replayed_code"]


def test_wrong_codes_on_every_host_count_against_one_account(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """Three wrong codes on one host and two on the other lock the account (deny 5) on
    both: guessing on ten hosts counts as guessing on one."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    for daemon in (first, first, first, second, second):
        with PamWire(daemon.pam_socket) as wire:
            wire.login(user, ["000000"], service="sshd", rhost="192.0.2.6")
    assert second.request("status", user=user)["failed_attempts"] == 5
    for daemon in (first, second):
        frames = _login(daemon, user, totp_now(secret))
        assert frames[-1] == "F" and "locked" in frames[-2], frames


def test_a_host_with_another_key_file_refuses_to_start(
    hosts: tuple[Daemon, Daemon, str], tmp_path: Path
) -> None:
    """A third host whose key file differs from the fleet's stops at start, naming its key
    file, instead of failing every login: the store keeps the key's check value."""
    first, _, dsn = hosts
    first.enroll("root")
    (tmp_path / "third").mkdir()
    third = Daemon(tmp_path / "third")
    with pytest.raises(RuntimeError, match="is not the key this store's secrets were sealed with"):
        third.start(**_on(dsn))


def test_postgresql_without_a_dsn_is_refused_with_the_line_and_key(mfad: Daemon) -> None:
    """`store.backend: postgresql` without `store.dsn` is a config error naming the key."""
    mfad.stop()
    with pytest.raises(RuntimeError, match=r"store\.dsn: required with store\.backend: postgresql"):
        mfad.start(store={"backend": "postgresql"})


def test_a_password_file_others_can_read_is_refused(mfad: Daemon, pg_cluster: PgCluster) -> None:
    """The database password is taken only from a file no one else can read (as the key
    file): one of mode 0644 stops mfad at start, naming the file and the mode."""
    secret = mfad.tmp / "db-password"
    secret.write_text("not-used\n")
    secret.chmod(0o644)
    mfad.stop()
    with pytest.raises(RuntimeError, match=r"must be owned by the daemon's user and mode 0600"):
        mfad.start(
            store={
                "backend": "postgresql",
                "dsn": pg_cluster.create_database(),
                "password_file": str(secret),
            }
        )
    secret.chmod(0o600)
    mfad.start(
        store={
            "backend": "postgresql",
            "dsn": pg_cluster.create_database(),
            "password_file": str(secret),
        }
    )
    assert mfad.request("status", user="root")["ok"]


def test_suspended_through_one_host_the_other_skips_the_code(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """An administrator suspends a user once, on any host: every host skips the second
    factor for them (PAM_IGNORE), and resuming on the other host asks for it again."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    assert second.request("suspend", user=user)["ok"]
    assert _login(first, user, totp_now(secret))[-1] == "K"
    assert first.request("resume", user=user)["ok"]
    frames = _login(second, user, "000000")
    assert frames[0] == "Verification code: " and frames[-1] == "M", frames  # asked, refused


def test_fifty_parallel_logins_with_one_code_on_two_hosts_let_exactly_one_in(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """The same valid code sent 50 times at once, half to each host: exactly one login
    succeeds; the other 49 are refused as a replay (one UPDATE on the one primary)."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    code = totp_now(secret)
    barrier = threading.Barrier(50)

    def attempt(daemon: Daemon) -> str:
        with PamWire(daemon.pam_socket, timeout=60) as wire:
            wire.send("S", start_payload(user, service="sshd", rhost="192.0.2.7"))
            while wire.recv().type not in "Pp":
                pass
            barrier.wait()
            wire.send("A", code)
            while (frame := wire.recv()).type != "R":
                pass
            return frame.payload

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(attempt, [first, second] * 25))
    assert sorted(results).count("S") == 1, results
    refused = [
        r.get("reason")
        for daemon in (first, second)
        for r in daemon.audit()
        if r["event"] == "attempt" and r["user"] == user and r["outcome"] != "success"
    ]
    assert len(refused) == 49, refused
    # replays until the fifth locks the account (lockout.deny 5); then refused unseen
    assert set(refused) <= {"replayed_code", "locked"}, refused


def _mfa(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    mfa = Path(sys.executable).with_name("mfa")
    return subprocess.run(
        [str(mfa), "--socket", str(daemon.control_socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _until_in_table(daemon: Daemon, user: str, count: int) -> list[dict[str, Any]]:
    """The fleet table's login records of `user` once there are `count` (it is a copy
    that follows each host's file, a moment behind)."""
    deadline = time.monotonic() + 30
    while True:
        out = _mfa(daemon, "audit", "--all-hosts", "--user", user, "--event", "login", "--json")
        records = [json.loads(line) for line in out.stdout.splitlines() if line]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def test_mfa_audit_all_hosts_reads_every_hosts_records_with_their_host(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """A login on each host: `mfa audit --all-hosts` on either host lists both, each with
    the host it happened on; without the flag each host lists its own only; the fleet
    summary counts both, and each host's chain in the table verifies."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    assert _login(first, user, "000000")[-1] == "M"  # max_attempts 1: refused at once
    assert _login(second, user, totp_now(secret))[-1] == "S"
    records = _until_in_table(second, user, 2)
    assert sorted((r["host"], r["outcome"]) for r in records) == [
        ("host-a", "failure"),
        ("host-b", "success"),
    ]
    table = _mfa(first, "audit", "--all-hosts", "--user", user, "--event", "login")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].startswith("HOST")
    assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == {"host-a", "host-b"}
    local = _mfa(first, "audit", "--user", user, "--event", "login", "--json")
    assert [json.loads(line)["host"] for line in local.stdout.splitlines()] == ["host-a"]
    summary = json.loads(_mfa(second, "audit", "summary", "--all-hosts", "--json").stdout)
    assert summary["logins"]["success"] >= 1 and summary["logins"]["failure"] >= 1
    verified = _mfa(first, "audit", "verify", "--all-hosts")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "host-a: intact" in verified.stdout and "host-b: intact" in verified.stdout


def test_the_fleet_table_is_append_only_and_an_edit_behind_its_back_is_found(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """No role can UPDATE or DELETE a record of the fleet's table (a trigger refuses,
    even the owner); a superuser who turns triggers off and rewrites a failure into a
    success is named by `mfa audit verify --all-hosts` (exit 7), host and record."""
    first, second, dsn = hosts
    user = make_user()
    secret = first.enroll(user)
    assert _login(second, user, "000000")[-1] == "M"
    assert _login(second, user, totp_now(secret))[-1] == "S"
    _until_in_table(first, user, 2)
    with psycopg.connect(dsn, autocommit=True) as db:
        for sql in (
            "UPDATE audit_records SET line = line WHERE host = 'host-b'",
            "DELETE FROM audit_records WHERE host = 'host-b'",
            "TRUNCATE audit_records",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                db.execute(sql.encode())
        db.execute("SET session_replication_role = replica")  # a superuser's way around
        row = db.execute(
            "SELECT seq FROM audit_records WHERE host = 'host-b' AND event = 'login'"
            " AND \"user\" = %s AND line::jsonb ->> 'outcome' = 'failure'",
            (user,),
        ).fetchone()
        assert row is not None
        db.execute(
            "UPDATE audit_records SET line = replace(line, '\"failure\"', '\"success\"')"
            " WHERE host = 'host-b' AND seq = %s",
            (row[0],),
        )
    verified = _mfa(first, "audit", "verify", "--all-hosts")
    assert verified.returncode == 7, verified.stdout + verified.stderr
    assert f"host-b: BROKEN at record {row[0] + 1} (edited: record {row[0]} was changed)" in (
        verified.stdout
    )
    assert "host-a: intact" in verified.stdout


def test_all_hosts_on_a_host_with_its_own_sqlite_store_says_why_not(mfad: Daemon) -> None:
    """--all-hosts on a host that keeps its own SQLite store is refused with the reason,
    not an empty listing."""
    out = _mfa(mfad, "audit", "--all-hosts")
    assert out.returncode != 0
    assert "store.backend: postgresql" in out.stderr


def readme_grants(role: str) -> str:
    """The README's grants for the role mfad runs as (its fleet section), for `role`: the
    test runs what an administrator would copy."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = re.search(r"```sql\n(   GRANT USAGE ON SCHEMA public TO mfad;.*?)```", readme, re.S)
    assert found, "the README's fleet section lost its GRANT block"
    return re.sub(r"\bTO mfad\b", f"TO {role}", found.group(1))


def test_mfad_runs_as_a_role_that_can_neither_change_the_schema_nor_the_audit_table(
    mfad: Daemon, pg_cluster: PgCluster, make_user: MakeUser
) -> None:
    """With the README's least-privilege grants, on a schema its owner set up, mfad logs
    users in and copies its records to the fleet table; the same role cannot drop a
    table or delete audit records; on a database nobody set up it stops with a message
    saying it could not set up the schema."""
    dsn = pg_cluster.create_database()
    role = f"mfad_app_{dsn.rsplit('=', 1)[1]}"
    as_role = dsn.replace("user=mfa ", f"user={role} ")
    mfad.restart(store={"backend": "postgresql", "dsn": dsn})  # the owner brings it up
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"CREATE ROLE {role} LOGIN".encode())
        db.execute(readme_grants(role).encode())
    try:
        user = make_user()
        secret = mfad.enroll(user)
        mfad.restart(store={"backend": "postgresql", "dsn": as_role}, audit={"host": "app"})
        assert _login(mfad, user, totp_now(secret))[-1] == "S"
        assert _until_in_table(mfad, user, 1)
        with psycopg.connect(as_role, autocommit=True) as db:
            for sql in (b"DROP TABLE audit_records", b"DELETE FROM audit_records"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    db.execute(sql)
        mfad.stop()
        fresh = pg_cluster.create_database().replace("user=mfa ", f"user={role} ")
        with pytest.raises(RuntimeError, match="cannot set up the store's schema"):
            mfad.start(store={"backend": "postgresql", "dsn": fresh})
    finally:
        mfad.stop()
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"DROP OWNED BY {role}".encode())  # its grants here
            db.execute(f"DROP ROLE {role}".encode())


def test_records_written_into_the_table_under_a_hosts_name_raise_an_alarm_on_that_host(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """Someone with the database's credentials appends records under host-b's name ahead
    of host-b's own trail: host-b's next records clash with them, and host-b writes one
    `audit_tampered` record (reason fleet_table_differs) into its own file, not one per
    clash; after a restart it says so again, once."""
    first, second, dsn = hosts
    user = make_user()
    secret = first.enroll(user)
    assert _login(second, user, totp_now(secret))[-1] == "S"
    _until_in_table(first, user, 1)
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT max(seq) FROM audit_records WHERE host = 'host-b'").fetchone()
        assert row is not None
        top = int(row[0])
        for seq in range(top + 1, top + 51):
            db.execute(
                "INSERT INTO audit_records VALUES ('host-b', %s, 0, 'login', 'x', %s)",
                (seq, json.dumps({"seq": seq, "event": "login", "outcome": "success"})),
            )
    for _ in range(3):
        _login(second, user, "000000")

    def alarms() -> list[dict[str, Any]]:
        return [
            r
            for r in second.audit()
            if r["event"] == "audit_tampered" and r.get("reason") == "fleet_table_differs"
        ]

    deadline = time.monotonic() + 30
    while not alarms() and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1)  # time for any further (wrong) alarms to be written
    assert len(alarms()) == 1, alarms()
    second.restart(**_on(dsn, "host-b", source_deny=100))
    deadline = time.monotonic() + 30
    while len(alarms()) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1)
    assert len(alarms()) == 2, alarms()

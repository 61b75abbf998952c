"""`mfad migrate-store`: a host's SQLite store moved into the fleet's PostgreSQL store.

A real mfad fills a SQLite store through its own control socket and logins
(active, pending, suspended, exempt and locked users, recovery codes, a login
history); it is stopped, `mfad migrate-store` copies the store into a fresh
database of a real private cluster (tests/pgcluster.py), and the same mfad,
restarted on PostgreSQL, treats every user as before: nobody enrols again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Daemon, MakeUser, totp_now
from pgcluster import PgCluster
from wire import PamWire

pytest_plugins = ["pgcluster"]


def _login(daemon: Daemon, user: str, answers: list[str], rhost: str = "192.0.2.9") -> list[str]:
    with PamWire(daemon.pam_socket) as wire:
        return [f.payload for f in wire.login(user, answers, service="sshd", rhost=rhost)]


def _migrate(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfad", "--config", str(daemon.config_path), "migrate-store", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_user_keeps_their_state_token_lock_and_history_in_postgresql(
    mfad: Daemon, pg_cluster: PgCluster, make_user: MakeUser
) -> None:
    """After migrate-store and a restart on PostgreSQL: the active user logs in with the
    authenticator they already have, and with one of their recovery codes once; the
    pending user is still asked to enrol; the suspended and the exempt users are still
    skipped; the locked user is still locked; the history and the counts are there."""
    active, codes_user, pending, suspended, exempt, locked = (make_user() for _ in range(6))
    secret = mfad.enroll(active)
    begun = mfad.request("enroll_begin", user=codes_user)
    confirmed = mfad.request("enroll_confirm", user=codes_user, code=totp_now(begun["secret"], -1))
    recovery = confirmed["recovery_codes"]
    assert _login(mfad, active, [totp_now(secret)])[-1] == "S"  # a login in the history
    assert mfad.request("require", user=pending)["changed"]
    mfad.enroll(suspended)
    assert mfad.request("suspend", user=suspended)["changed"]
    assert mfad.request("exempt", user=exempt, reason="break-glass account")["changed"]
    mfad.enroll(locked)
    for n in range(5):  # lockout.deny 5, from five hosts (one host is blocked at 4)
        _login(mfad, locked, ["000000"], rhost=f"198.51.100.{n + 1}")
    assert mfad.request("status", user=locked)["locked_until"] is not None

    dsn = pg_cluster.create_database()
    mfad.stop()
    mfad.write_config(store={"backend": "postgresql", "dsn": dsn})
    done = _migrate(mfad, "--from", str(mfad.db_path))
    assert done.returncode == 0, done.stderr
    assert "accounts: 6" in done.stdout and "logins: 1" in done.stdout, done.stdout
    assert "recovery_codes: 40" in done.stdout, done.stdout  # four enrolled users, ten each

    mfad.start(store={"backend": "postgresql", "dsn": dsn})
    assert _login(mfad, active, [totp_now(secret, 1)])[-1] == "S"
    assert _login(mfad, codes_user, [recovery[0]])[-1] == "S"
    assert _login(mfad, codes_user, [recovery[0]])[-1] != "S"  # spent
    assert mfad.request("status", user=pending)["state"] == "pending"
    assert _login(mfad, suspended, [])[-1] == "K"
    assert _login(mfad, exempt, [])[-1] == "K"
    status = mfad.request("status", user=locked)
    assert status["locked_until"] is not None and status["failed_attempts"] >= 5
    history = mfad.request("show", user=active)["history"]
    assert len(history) == 2 and {h["rhost"] for h in history} == {"192.0.2.9"}
    assert mfad.request("status", user=codes_user)["recovery_codes_left"] == 9


def test_a_target_that_holds_accounts_is_replaced_only_when_told(
    mfad: Daemon, pg_cluster: PgCluster, make_user: MakeUser
) -> None:
    """A second migrate-store into the same database is refused and writes nothing; with
    --replace it replaces the target's rows with the source's."""
    user = make_user()
    mfad.enroll(user)
    dsn = pg_cluster.create_database()
    mfad.stop()
    mfad.write_config(store={"backend": "postgresql", "dsn": dsn})
    assert _migrate(mfad, "--from", str(mfad.db_path)).returncode == 0
    again = _migrate(mfad, "--from", str(mfad.db_path))
    assert again.returncode == 1
    assert "already holds accounts" in again.stderr and "--replace" in again.stderr
    replaced = _migrate(mfad, "--from", str(mfad.db_path), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "accounts: 1" in replaced.stdout


def test_migrate_store_refuses_while_mfad_runs_and_without_a_postgresql_target(
    mfad: Daemon, pg_cluster: PgCluster
) -> None:
    """With mfad still running on this host the copy would miss what happens after it:
    refused, naming how to stop it. With a config still on SQLite there is no target:
    refused, naming the keys to set."""
    sqlite_only = _migrate(mfad, "--from", str(mfad.db_path))
    assert sqlite_only.returncode == 1 and "store.backend: postgresql" in sqlite_only.stderr
    mfad.write_config(store={"backend": "postgresql", "dsn": pg_cluster.create_database()})
    running = _migrate(mfad, "--from", str(mfad.db_path))
    assert running.returncode == 1 and "systemctl stop mfad" in running.stderr


def test_a_source_sealed_with_another_key_is_refused_before_anything_is_copied(
    mfad: Daemon, pg_cluster: PgCluster, make_user: MakeUser, tmp_path: Path
) -> None:
    """migrate-store opens the source with this host's key file first: a store whose
    secrets that key cannot open is refused, and the target stays empty."""
    mfad.enroll(make_user())
    mfad.stop()
    other_key = tmp_path / "other.key"
    subprocess.run([sys.executable, "-m", "mfad", "--generate-key", str(other_key)], check=True)
    dsn = pg_cluster.create_database()
    mfad.write_config(store={"backend": "postgresql", "dsn": dsn}, key_file=str(other_key))
    refused = _migrate(mfad, "--from", str(mfad.db_path))
    assert refused.returncode == 1
    assert "is not the key this store's secrets were sealed with" in refused.stderr
    import psycopg

    with psycopg.connect(dsn) as db:
        tables = db.execute("SELECT to_regclass('accounts')").fetchone()
        assert tables is None or tables[0] is None  # nothing was even set up


@pytest.fixture(autouse=True)
def _fast_lockout(mfad: Daemon) -> None:
    """Locks last long enough to survive the migration (an hour), and no back-off."""
    mfad.restart(lockout={"delay": 0, "unlock_time": 3600})

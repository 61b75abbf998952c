"""Many hosts, one store: two real mfad daemons on one PostgreSQL database.

Each daemon stands for a host: its own sockets, audit log and process, the same
key file, one database (a private cluster, tests/pgcluster.py). A user enrolled
through one is enrolled on the other, a code used on one is refused on the
other, and wrong codes on both count against one account.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, MakeUser, running_daemon, totp_now
from pgcluster import PgCluster
from wire import PamWire

pytest_plugins = ["pgcluster"]


def _on(dsn: str, **lockout: object) -> dict[str, object]:
    """Config overrides for a daemon on `dsn`; one answer per login keeps counts simple."""
    return {
        "store": {"backend": "postgresql", "dsn": dsn},
        "lockout": {"delay": 0, **lockout},
        "login": {"max_attempts": 1},
    }


@pytest.fixture
def hosts(pg_cluster: PgCluster) -> Iterator[tuple[Daemon, Daemon, str]]:
    """Two daemons on one fresh database, sharing one key file; and the database's DSN."""
    dsn = pg_cluster.create_database()
    with running_daemon() as first, running_daemon() as second:
        first.restart(**_on(dsn, source_deny=100))
        second.stop()
        shutil.copy(first.key_path, second.key_path)
        second.start(**_on(dsn, source_deny=100))
        yield first, second, dsn


def _login(daemon: Daemon, user: str, code: str) -> list[str]:
    with PamWire(daemon.pam_socket) as wire:
        return [f.payload for f in wire.login(user, [code], service="sshd", rhost="192.0.2.5")]


def test_a_code_used_on_one_host_is_refused_on_the_other(
    hosts: tuple[Daemon, Daemon, str], make_user: MakeUser
) -> None:
    """A user enrolled through one host logs in on the other, and the code that logged in
    on one host is refused on the other as already used (RFC 6238 5.2, across hosts)."""
    first, second, _ = hosts
    user = make_user()
    secret = first.enroll(user)
    assert second.request("status", user=user)["state"] == "active"
    code = totp_now(secret)
    assert _login(second, user, code)[-1] == "S"
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

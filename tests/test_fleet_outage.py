"""Many hosts, one store: what a login does when the shared PostgreSQL goes away.

A real mfad on a real private cluster (tests/pgcluster.py), logins through the
real libpam and pam_mfa.so with its default timeout= (10 s). The database is
stopped while mfad is idle, stopped in the middle of a login, and frozen
(SIGSTOP: a host that stops answering with its connections open). Each time the
login fails closed with mfad's own message, not the module's timeout, and is
recorded in the host's own audit file; the event loop goes on serving other
connections; and once the database is back, logins work again without
restarting mfad. The records written meanwhile reach the fleet's audit table.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Daemon, MakeUser, running_daemon, totp_now
from pamtest import PamResult, authenticate, write_service
from pgcluster import PgCluster
from wire import PamWire, start_payload

from mfa_wire.framing import encode

pytest_plugins = ["pgcluster"]

UNAVAILABLE = "Verification is unavailable right now. Contact your administrator."


@pytest.fixture
def host(pg_cluster: PgCluster, pam_module: Path) -> Iterator[tuple[Daemon, PgCluster]]:
    """One mfad on a fresh database of the shared cluster; the cluster is running again
    after the test whatever it did to it."""
    dsn = pg_cluster.create_database()
    try:
        with running_daemon() as daemon:
            daemon.restart(store={"backend": "postgresql", "dsn": dsn}, lockout={"delay": 0})
            write_service(
                daemon.tmp / "pam.d",
                "sshd",
                [f"auth required {pam_module} socket={daemon.pam_socket}"],
            )
            yield daemon, pg_cluster
    finally:
        if not (pg_cluster.data / "postmaster.pid").exists():
            pg_cluster.start()


def _login(daemon: Daemon, user: str, answers: list[str]) -> PamResult:
    """pam_authenticate through the real libpam and pam_mfa.so (timeout=10 s, fail closed)."""
    return authenticate(daemon.tmp / "pam.d", "sshd", user, answers, rhost="192.0.2.40")


def _unavailable_records(daemon: Daemon, user: str) -> list[dict[str, object]]:
    return [
        r
        for r in daemon.audit()
        if r["event"] == "login" and r.get("user") == user and r.get("reason") == "unavailable"
    ]


def test_a_stopped_database_fails_logins_closed_and_they_work_again_when_it_is_back(
    host: tuple[Daemon, PgCluster], make_user: MakeUser
) -> None:
    """PostgreSQL stopped while mfad is idle: a login is refused with mfad's message (not
    the module's timeout) and recorded in the host's own audit file; PostgreSQL started
    again: the same mfad process logs the user in with the next code."""
    daemon, cluster = host
    user = make_user()
    secret = daemon.enroll(user)
    pid = daemon.proc.pid if daemon.proc else None
    cluster.stop()
    refused = _login(daemon, user, [totp_now(secret)])
    assert refused.name == "PAM_AUTHINFO_UNAVAIL", refused
    assert UNAVAILABLE in refused.texts("error")
    assert len(_unavailable_records(daemon, user)) == 1
    assert 'mfad_errors_total{kind="store"} 1.0' in daemon.request("metrics")["text"]
    cluster.start()
    back = _login(daemon, user, [totp_now(secret)])
    assert back.name == "PAM_SUCCESS", back
    assert daemon.proc is not None and daemon.proc.pid == pid  # not restarted


def test_a_database_stopped_in_the_middle_of_a_login_fails_it_closed(
    host: tuple[Daemon, PgCluster], make_user: MakeUser
) -> None:
    """The database goes away after mfad has asked for the code and before the answer:
    the right code is not accepted (mfad cannot record its step as used), the user
    reads mfad's message, the login is recorded; afterwards logins work again."""
    daemon, cluster = host
    user = make_user()
    secret = daemon.enroll(user)
    with PamWire(daemon.pam_socket, timeout=30) as wire:
        wire.send("S", start_payload(user, service="sshd", rhost="192.0.2.41"))
        while wire.recv().type not in "Pp":
            pass
        cluster.stop()
        wire.send("A", totp_now(secret))
        rest = [wire.recv()]
        while rest[-1].type != "R":
            rest.append(wire.recv())
    assert rest[-1].payload == "U", rest
    assert any(f.payload == UNAVAILABLE for f in rest), rest
    assert len(_unavailable_records(daemon, user)) == 1
    cluster.start()
    assert _login(daemon, user, [totp_now(secret, 1)]).name == "PAM_SUCCESS"


def test_a_frozen_database_fails_logins_within_the_module_timeout_and_stalls_nothing_else(
    host: tuple[Daemon, PgCluster], make_user: MakeUser
) -> None:
    """The database host stops answering with its connections open (SIGSTOP): a login
    gets mfad's refusal before the module's own 10 s timeout would end it; while that
    login waits, mfad still answers another connection at once (its loop is not
    blocked); thawed, the database serves logins again."""
    daemon, cluster = host
    user = make_user()
    secret = daemon.enroll(user)
    result: dict[str, PamResult] = {}
    with cluster.paused():
        waiting = threading.Thread(
            target=lambda: result.update(login=_login(daemon, user, [totp_now(secret)]))
        )
        waiting.start()
        time.sleep(1)  # the login is waiting on the database now
        # a frame mfad must refuse: answered from the loop, with no database
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.settimeout(5)
            other.connect(str(daemon.pam_socket))
            other.sendall(encode("Z", "not a frame mfad knows"))
            while other.recv(4096):  # mfad answers and closes; a timeout here fails
                pass
            still_waiting = waiting.is_alive()
        waiting.join(timeout=30)
    assert still_waiting, "the login should still have been waiting on the database"
    refused = result["login"]
    assert refused.name == "PAM_AUTHINFO_UNAVAIL", refused
    assert UNAVAILABLE in refused.texts("error")  # mfad's words: not the module's timeout
    assert len(_unavailable_records(daemon, user)) == 1
    assert _login(daemon, user, [totp_now(secret, 1)]).name == "PAM_SUCCESS"


def test_records_written_while_the_database_was_down_reach_the_fleet_table(
    host: tuple[Daemon, PgCluster], make_user: MakeUser
) -> None:
    """The host's file is the record; the fleet's table catches up by itself: the refusal
    written while PostgreSQL was stopped is in `mfa audit --all-hosts` once it is back."""
    daemon, cluster = host
    user = make_user()
    secret = daemon.enroll(user)
    cluster.stop()
    assert _login(daemon, user, [totp_now(secret)]).name == "PAM_AUTHINFO_UNAVAIL"
    cluster.start()
    deadline = time.monotonic() + 60
    while True:
        answer = daemon.request("audit_query", all_hosts=True, user=user, event="login")
        if any(r.get("reason") == "unavailable" for r in answer.get("records", [])):
            break
        assert time.monotonic() < deadline, answer
        time.sleep(0.5)


def test_after_a_restart_every_pooled_connection_is_replaced_not_only_the_first(
    host: tuple[Daemon, PgCluster], make_user: MakeUser
) -> None:
    """Eight logins at once open several pooled connections; PostgreSQL restarts, which
    leaves all of them dead; eight logins at once then all succeed: the first dead
    connection found makes mfad replace the others before they fail a login."""
    daemon, cluster = host
    users = [make_user() for _ in range(8)]
    secrets_ = {user: daemon.enroll(user) for user in users}

    def all_at_once(offset: int) -> list[str]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(
                pool.map(lambda u: _login(daemon, u, [totp_now(secrets_[u], offset)]).name, users)
            )

    assert all_at_once(0) == ["PAM_SUCCESS"] * 8
    cluster.stop()
    cluster.start()
    assert all_at_once(1) == ["PAM_SUCCESS"] * 8

"""The store runs logins' statements on the event loop; a locked database file must
neither fail a login nor freeze the others (see SqliteStore's docstring).

Something outside mfad may hold the SQLite write lock for a while: a backup with
the sqlite3 shell, an administrator's inspection. Statements that find the file
locked are run again on the store thread, which waits for the lock; the loop
goes on serving everybody else.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from conftest import Daemon, totp_now
from wire import PamWire

HOLD = 1.5  # seconds the outside connection keeps the write lock


def _login(mfad: Daemon, user: str, answers: list[str], into: dict[str, object]) -> None:
    began = time.monotonic()
    with PamWire(mfad.pam_socket) as wire:
        into["result"] = wire.login(user, answers, service="sshd")[-1].payload
    into["seconds"] = time.monotonic() - began


def test_a_held_write_lock_delays_a_code_login_and_never_fails_it(mfad: Daemon) -> None:
    """While another process holds the store's write lock, a right code waits for the
    lock and then succeeds (it is not refused as unavailable), and meanwhile a login
    that needs no write (an unenrolled user, skipped) answers at once."""
    mfad.restart(mode="optional")
    secret = mfad.enroll("root")
    outside = sqlite3.connect(mfad.db_path, isolation_level=None)
    coded: dict[str, object] = {}
    skipped: dict[str, object] = {}
    try:
        outside.execute("BEGIN IMMEDIATE")
        held_at = time.monotonic()
        waiter = threading.Thread(target=_login, args=(mfad, "root", [totp_now(secret)], coded))
        waiter.start()
        time.sleep(0.3)  # the code login is now waiting for the lock
        _login(mfad, "nobody", [], skipped)
        still_waiting = waiter.is_alive()
        time.sleep(max(0.0, HOLD - (time.monotonic() - held_at)))
        outside.execute("ROLLBACK")
        waiter.join(timeout=10)
    finally:
        outside.close()
    assert skipped == {"result": "K", "seconds": skipped["seconds"]}
    assert float(skipped["seconds"]) < 0.5  # type: ignore[arg-type]
    assert still_waiting, "the code login did not wait for the write lock"
    assert coded["result"] == "S"
    assert float(coded["seconds"]) >= HOLD - 0.35  # type: ignore[arg-type]
    login = [r for r in mfad.audit() if r["event"] == "login" and r["user"] == "root"][-1]
    assert (login["outcome"], login["reason"]) == ("success", "correct_code")


def test_a_lock_held_past_the_wait_fails_closed_with_a_message(mfad: Daemon) -> None:
    """A write lock held longer than the store thread waits (5 s) fails the login closed
    (UNAVAILABLE, with the message telling the user to contact an administrator)
    and the daemon keeps serving: the next login, after the lock is gone, succeeds."""
    secret = mfad.enroll("root")
    outside = sqlite3.connect(mfad.db_path, isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")
        with PamWire(mfad.pam_socket) as wire:
            frames = wire.login("root", [totp_now(secret)], service="sshd")
        outside.execute("ROLLBACK")
    finally:
        outside.close()
    assert frames[-1].payload == "U"
    assert "Contact your administrator" in frames[-2].payload
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login("root", [totp_now(secret, 1)], service="sshd")[-1].payload == "S"

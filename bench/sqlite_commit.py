"""What one consumed time step costs SQLite alone, outside mfad: CPU per transaction.

    .venv/bin/python bench/sqlite_commit.py [USERS] [LOGINS]

A store made by mfad's own SqliteStore (its schema, WAL, 100,000 active
accounts by default), then, on one connection set up as mfad's loop connection
(synchronous=NORMAL, no autocheckpoint, a PASSIVE checkpoint every 1,000
commits), the statements of SqliteStore.consume_step for random users:

- as mfad runs them: BEGIN IMMEDIATE, the conditional UPDATE, the `logins`
  history row, COMMIT;
- the conditional UPDATE alone, in autocommit (what the replay check needs).

Prints CPU µs per transaction for each. Used by bench/RESULTS.md to weigh
the history row against the replay check itself.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import run  # noqa: F401  (puts tests/ and the daemon on sys.path like the other benches)

from mfad.store import SqliteStore

UPDATE = (
    "UPDATE accounts SET last_step = ?, clock_offset = 0, updated_at = ?,"
    " last_verified_at = ?, last_rhost = ?"
    " WHERE user = ? AND state = 'active' AND (last_step IS NULL OR last_step < ?)"
)
INSERT = (
    "INSERT INTO logins (user, at, service, rhost, method) VALUES (?, ?, 'sshd', ?, 'totp')"
)


def make_store(path: Path, users: int) -> None:
    async def create() -> None:
        store = await SqliteStore.open(path)
        await store.close()

    asyncio.run(create())
    db = sqlite3.connect(path, isolation_level=None)
    with db:
        db.executemany(
            "INSERT INTO accounts (user, state, secret, updated_at) VALUES (?, 'active', ?, 0)",
            ((f"u{i:07d}", random.randbytes(60)) for i in range(users)),
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def measure(path: Path, users: int, logins: int, with_history: bool) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    names = [f"u{random.randrange(users):07d}" for _ in range(logins)]
    step = int(time.time() // 30) + 1_000_000  # above any step used before
    start = time.process_time()
    for i, user in enumerate(names):
        now = time.time()
        if with_history:
            db.execute("BEGIN IMMEDIATE")
            db.execute(UPDATE, (step + i, now, now, "198.51.100.7", user, step + i))
            db.execute(INSERT, (user, now, "198.51.100.7"))
            db.execute("COMMIT")
        else:
            db.execute(UPDATE, (step + i, now, now, "198.51.100.7", user, step + i))
        if i % 1000 == 999:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    cpu = time.process_time() - start
    db.close()
    return 1e6 * cpu / logins


def main() -> int:
    users = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    logins = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    with tempfile.TemporaryDirectory(prefix="mfa-sqlite-commit.") as tmp:
        path = Path(tmp) / "mfad.db"
        make_store(path, users)
        for label, history in (("consume_step as mfad runs it", True),
                               ("the conditional UPDATE alone", False)):
            print(f"{label}: {measure(path, users, logins, history):.1f} µs CPU per transaction")
    return 0


if __name__ == "__main__":
    sys.exit(main())

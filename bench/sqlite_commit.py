"""What one consumed time step costs in mfad's store alone: CPU per consume_step.

    .venv/bin/python bench/sqlite_commit.py [USERS] [LOGINS]

A store made and filled through mfad's own SqliteStore (USERS active
accounts, 100,000 by default), then SqliteStore.consume_step for LOGINS
random users, twice, through the real method and its loop connection:

- as a login calls it (with a Site): the replay UPDATE and the `logins`
  history row, in one transaction;
- as a mere proof calls it (no Site): the replay UPDATE alone.

Prints CPU µs per call for each; the difference is what the history row
costs. Used by bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from mfad.model import PendingEnrolment, Site, TokenParams
from mfad.store import SqliteStore


async def fill(store: SqliteStore, users: int) -> None:
    now = time.time()

    async def one(i: int) -> None:
        # the secret is never opened here, so random bytes stand in for a sealed one
        pending = PendingEnrolment(f"u{i:07d}", random.randbytes(60), TokenParams(), now)
        await store.begin_enrolment(pending)
        await store.activate(pending, step=0, now=now)

    for first in range(0, users, 1000):
        await asyncio.gather(*(one(i) for i in range(first, min(first + 1000, users))))


async def measure(
    store: SqliteStore, users: int, logins: int, site: Site | None, first_step: int
) -> float:
    names = [f"u{random.randrange(users):07d}" for _ in range(logins)]
    start = time.process_time()
    for i, user in enumerate(names):
        await store.consume_step(user, first_step + i, 0, time.time(), site)
    return 1e6 * (time.process_time() - start) / logins


async def main_async(users: int, logins: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mfa-sqlite-commit.") as tmp:
        store = await SqliteStore.open(Path(tmp) / "mfad.db")
        try:
            await fill(store, users)
            step = 1_000_000  # each call a new, higher step, so every UPDATE changes a row
            for label, site in (
                ("consume_step for a login (UPDATE + history row)", Site("sshd", "198.51.100.7")),
                ("consume_step for a proof (UPDATE alone)", None),
            ):
                us = await measure(store, users, logins, site, step)
                step += logins
                print(f"{label}: {us:.1f} µs CPU per call")
        finally:
            await store.close()


def main() -> int:
    users = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    logins = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    asyncio.run(main_async(users, logins))
    return 0


if __name__ == "__main__":
    sys.exit(main())

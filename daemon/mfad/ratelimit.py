"""Bounds on what an unprivileged local user can make mfad do and write.

The control socket is open to every local user. Without bounds, a few clients
sending refused requests as fast as they can write about 2,400 audit records a
second; a full disk then refuses every login (audit.required). Two measures:

- ``Budget``: each uid that is not root or an administrator may send
  ``BURST`` requests at once and ``RATE`` a second after that (a token bucket).
  Past it the request is answered ``rate_limited`` at once, without touching
  the store. People typing `mfa` commands never come near it.
- ``Coalescer``: refusals repeated within ``WINDOW`` seconds with the same
  (uid, op, error) are written as one record: the first in full, the rest as
  a count in one ``control_refusals`` record when the window ends (or at
  shutdown). Rate-limited requests are counted the same way.

Each control connection carries one request (docs/protocol.md), so a limit per
connection is the limit per request; connections that send nothing are bounded
by ``max_connections`` and eviction (server.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 20
RATE = 0.5  # requests a second, sustained
WINDOW = 60.0  # seconds over which repeated refusals become one record
MAX_RUNS = 10_000  # runs kept at once; past it, further ones per uid share one


class Budget:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # uid -> (tokens, at)

    def allow(self, uid: int) -> bool:
        """Spend one request of `uid`'s budget; False when there is none left."""
        now = self._clock()
        tokens, at = self._buckets.get(uid, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) * RATE)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        if tokens - 1.0 + 1e-9 >= BURST:
            self._buckets.pop(uid, None)  # full again: nothing worth keeping
        else:
            self._buckets[uid] = (tokens - 1.0, now)
        return True


@dataclass(slots=True)
class _Run:
    first_at: float
    repeated: int = 0


Key = tuple[int, str, str]  # (uid, op, error)


class Coalescer:
    """Runs are timed on `clock` (monotonic: a wall clock stepping back must not hold
    counts back); `due` reports when each run began on the wall clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._runs: dict[Key, _Run] = {}

    def first(self, key: Key) -> bool:
        """Whether this refusal starts a run (write it in full); else it is only counted.

        Callers report `due()` runs first, so a run still here is inside its window.
        """
        run = self._runs.get(key)
        if run is None:
            if len(self._runs) >= MAX_RUNS:  # keys are (uid, op, error): bounded anyway
                key = (key[0], "*", "*")
                if key in self._runs:
                    self._runs[key].repeated += 1
                    return False
            self._runs[key] = _Run(self._clock())
            return True
        run.repeated += 1
        return False

    def due(self, *, everything: bool = False) -> list[tuple[Key, int, float]]:
        """Runs whose window ended with repeats to report: (key, count, wall-clock start);
        removed."""
        now = self._clock()
        found = []
        for key, run in list(self._runs.items()):
            if everything or now - run.first_at >= WINDOW:
                del self._runs[key]
                if run.repeated:
                    found.append((key, run.repeated, time.time() - (now - run.first_at)))
        return found

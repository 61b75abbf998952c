"""Guessing defence: slow and block one source first, lock the account last.

Stages, for each wrong code (pam_faillock semantics for the account lock):

1. Back-off: the answer to a wrong code is delayed ``delay`` seconds, doubling
   with each consecutive failure from that (user, remote host), up to
   ``max_delay``. The delay is served outside any lock, so the owner logging in
   from elsewhere is not slowed.
2. Source block: ``source_deny`` wrong codes from one remote host block that
   host for that user for ``source_block_time``. An attacker on one host cannot
   lock the owner out: with ``source_deny < deny`` the account lock needs
   guesses from several hosts.
3. Account lock: ``deny`` consecutive wrong codes within ``fail_interval``, from
   anywhere, lock the account for ``unlock_time`` (0: until ``mfa unlock``).
   Root is only locked with ``even_deny_root``.
4. Lifetime cap: an automatic unlock restarts stage 3's count, so on its own it
   would allow ``deny`` guesses every ``unlock_time`` forever (a 6-digit code
   with a ±1 window falls in about a year). ``lifetime_deny`` wrong codes with
   no success in between (NIST SP 800-63B §5.2.2 caps them at 100) lock the
   account until an administrator unlocks it, whatever ``unlock_time`` says,
   root's too.

A correct code clears the account counter and that source's. Counters live in
the store, so they survive restarts. All checks for one user run under one
asyncio lock, so with 200 parallel guesses exactly ``deny`` are checked
against the secret; the rest are refused unseen. Each count is one atomic
read-modify-write in the store (``Store.update_guard``), so daemons on
several hosts sharing one store never lose a count between them.

A refused answer is delayed as a wrong one from that source would be, and
advances that source's back-off as a wrong one does, so that with ``silent`` a
locked account cannot be told from wrong codes by timing.

The source is whatever the caller names: ``host:<rhost>`` or ``local`` for a
login, ``uid:<n>`` for a code given over the control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from mfa_wire.events import Reason
from mfad.config import LockoutConfig
from mfad.model import Counter, GuardState
from mfad.store import Store


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason  # LOCKED or SOURCE_BLOCKED
    until: float  # inf: until an administrator unlocks
    delay: float = 0.0  # what a wrong code from this source would wait now


@dataclass(frozen=True, slots=True)
class FailureEffect:
    delay: float  # seconds to wait before answering
    locked_until: float | None = None  # set when this failure locked the account
    blocked_until: float | None = None  # set when this failure blocked the source
    failures: int = 0  # the account's consecutive failures, this one included
    capped: bool = False  # this failure reached lockout.lifetime_deny


def login_source(rhost: str) -> str:
    return f"host:{rhost}" if rhost else "local"


def control_source(uid: int) -> str:
    return f"uid:{uid}"


class Guard:
    def __init__(self, store: Store, config: Callable[[], LockoutConfig]) -> None:
        self._store = store
        self._config = config  # read per call, so a reload applies at once
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator[None]:
        """Serialise every check of one user's codes; entries vanish when unused."""
        lock, users = self._locks.get(user, (asyncio.Lock(), 0))
        self._locks[user] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user]
            if users == 1:
                del self._locks[user]
            else:
                self._locks[user] = (lock, users - 1)

    async def refusal(self, user: str, source: str, now: float) -> Refusal | None:
        """Why no code of this user from this source may be checked now, if so."""
        return _refusal(await self._store.get_guard(user, source), self._config(), now)

    @contextlib.asynccontextmanager
    async def attempt(self, user: str, source: str, now: float) -> AsyncIterator[Attempt]:
        """One answer's check, serialised per user, with the counters read once."""
        async with self.hold(user):
            state = await self._store.get_guard(user, source)
            yield Attempt(self._store, self._config(), user, source, state, now)

    async def unlock(self, user: str) -> bool:
        async with self.hold(user):
            return await self._store.clear_guard(user)


def _delay(cfg: LockoutConfig, source_failures: int) -> float:
    """The back-off before answering the `source_failures`-th consecutive wrong code."""
    return float(min(cfg.delay * 2 ** max(source_failures - 1, 0), cfg.max_delay))


def _refusal(state: GuardState, cfg: LockoutConfig, now: float) -> Refusal | None:
    delay = _delay(cfg, state.source.failures + 1)
    if state.account.until > now:
        return Refusal(Reason.LOCKED, state.account.until, delay)
    if state.source.until > now:
        return Refusal(Reason.SOURCE_BLOCKED, state.source.until, delay)
    return None


class Attempt:
    """The guard's view of one answer: refused unseen, or counted after the check."""

    def __init__(
        self,
        store: Store,
        cfg: LockoutConfig,
        user: str,
        key: str,
        state: GuardState,
        now: float,
    ) -> None:
        self._store, self._cfg, self._user, self._key = store, cfg, user, key
        self._state, self._now = state, now
        self.refusal = _refusal(state, cfg, now)

    async def failed(self) -> FailureEffect:
        """Count a wrong code; lock or block when a threshold is reached.

        Counted on the counters as the store has them at this instant (update_guard), not
        as they were read before the check: another daemon sharing the store may have
        counted in between."""
        effects: list[FailureEffect] = []

        def change(state: GuardState) -> GuardState:
            counted, effect = _after_failure(state, self._cfg, self._user, self._now)
            effects[:] = [effect]  # the last run's: the store may run `change` again
            return counted

        await self._store.update_guard(self._user, self._key, change)
        return effects[0]

    async def refused(self) -> None:
        """An answer refused unseen still advances this source's back-off (not the account's
        count): with ``silent``, answers to a locked account slow down like wrong ones."""
        now = self._now

        def change(state: GuardState) -> GuardState:
            was = state.source
            return replace(
                state, source=replace(was, failures=was.failures + 1, first_at=was.first_at or now)
            )

        await self._store.update_guard(self._user, self._key, change)

    async def succeeded(self) -> None:
        """A correct code clears the account counter and this source's (if there is any)."""
        if self._state != _CLEAN:
            await self._store.put_guard(self._user, self._key, _CLEAN)


_CLEAN = GuardState(Counter(), Counter())


def _after_failure(
    state: GuardState, cfg: LockoutConfig, user: str, now: float
) -> tuple[GuardState, FailureEffect]:
    """The counters after one more wrong code, and what it does: pure, for update_guard."""
    account = _count(state.account, now, cfg.fail_interval)
    source = _count(state.source, now, cfg.fail_interval)
    effect = FailureEffect(_delay(cfg, source.failures), failures=account.failures)
    if source.failures >= cfg.source_deny:
        source = replace(source, until=now + cfg.source_block_time)
        effect = replace(effect, blocked_until=source.until)
    # root is spared the account lock (pam_faillock's even_deny_root), never the cap:
    # from enough addresses the per-source block alone would allow guessing for ever
    capped = 0 < cfg.lifetime_deny <= account.total
    denied = account.failures >= cfg.deny and (user != "root" or cfg.even_deny_root)
    if capped or denied:
        until = now + cfg.unlock_time if cfg.unlock_time > 0 and not capped else math.inf
        account = replace(account, until=until)
        effect = replace(effect, locked_until=until, capped=capped)
    return GuardState(account, source), effect


def _count(counter: Counter, now: float, interval: float) -> Counter:
    """One more failure; a run older than the interval, or ended by a lock, starts over,
    but the total since the last success (the lifetime cap's count) goes on."""
    if counter.failures == 0 or now - counter.first_at > interval or counter.until:
        return Counter(1, now, 0.0, counter.total + 1)
    return replace(counter, failures=counter.failures + 1, total=counter.total + 1)

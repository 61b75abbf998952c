"""Mail to the administrators about what the audit trail records.

Which records (``notify.events``; config.NOTICES names them all):

    disable, reset, exempt,   an administrator's action (a ``control`` record with that
    suspend, and opt-in:      ``op``, written before the change; an ``error`` record after
    require, resume,          it says the change failed), or a login that moved the
    unexempt, unlock, forget  account to suspended, disabled or exempt (``state_changed``)
    lock                      ``lock_set`` with reason ``deny`` (lockout.deny wrong answers)
    lifetime_cap              ``lock_set`` with reason ``lifetime_cap``
    failures                  ``notify.failure_burst`` answers not accepted (``attempt``:
                              wrong, or refused unseen while locked or blocked) for one
                              user within ``notify.batch_seconds``
    email_recovery            ``email_code`` with purpose ``recovery``: a user who lost
                              their device had a one-time recovery code mailed at a login
                              (its use then suspends the account: a ``suspend`` notice)
    self_enrol                ``control`` op ``enroll_confirm`` from ``suspended``: the
                              user enrolled anew (lost_device.self_enrol) and is active

Fed by the AuditLog's observer, which is told of every record as it is written,
on the event loop, and never skips one: a subscriber's queue drops records
when it is full, and catching up from the file (auditmirror's way) would need
a place to remember what was already mailed. Here a fact is noted in memory
the moment its record is on disk; the cost per record is a dictionary lookup.
What a running mfad has noted is mailed, or its failure recorded; what is
noted in the last batch window before mfad stops gets one try at stop; a
crash loses at most that window's notes (the audit trail has the records).

Batched: the first fact starts a window of ``notify.batch_seconds``; at its
end one message lists every fact noted in it (at most MAX_FACTS; the rest are
counted by kind), so a flood sends one message per window, and a burst of
wrong answers for one user is one fact whose count goes up. Each fact says
what, who, when, on which host and by whom, from fields picked one by one:
never a whole record, and records never hold a code or a secret anyway.

A message that cannot be sent is recorded (``notice_failed``, with the
MailError saying why) and tried again after the window, then after twice as
long each time up to RETRY_MAX; facts noted meanwhile join it, so an outage
ends in one message, not one per window. After GIVE_UP seconds it is dropped,
recorded as given up. Sending runs in a task of its own: a login never waits
for it, and mail never waits for a login.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from mfa_wire.events import Event, Outcome, Reason
from mfad.audit import AuditLog
from mfad.config import Config
from mfad.errors import AuditError, MailError
from mfad.mailer import Mailer
from mfad.times import iso

log = structlog.get_logger("mfad.notify")

MAX_FACTS = 100  # listed in one message; more are counted by kind
MAX_TRACKED = 10_000  # users whose recent wrong answers are counted at once
MAX_TEXT = 300  # characters of one value (an administrator's reason, say)
MAX_HOSTS = 10  # remote hosts named in a burst of wrong answers
RETRY_MAX = 600.0  # seconds between tries, at most
GIVE_UP = 86_400.0  # seconds after which an unsent message is dropped
FINAL_TRY = 3.0  # seconds for the last try when mfad stops

_STATES = {"suspended": "suspend", "disabled": "disable", "exempt": "exempt"}
_LOCKS: dict[str, str] = {Reason.DENY: "lock", Reason.LIFETIME_CAP: "lifetime_cap"}
_COUNTED = (Outcome.FAILURE, Outcome.REFUSED)  # answers not accepted


@dataclass(slots=True)
class Fact:
    """One thing to tell: what (`kind`), who, when, and details as (label, text) lines."""

    kind: str
    user: str
    at: float
    details: list[tuple[str, str]] = field(default_factory=list)
    # a burst of wrong answers: counted while its window is open
    wrong: int = 0
    refused: int = 0
    last: float = 0.0
    rhosts: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)

    def count(self, outcome: object, rhost: object, service: object, at: float) -> None:
        if outcome == Outcome.REFUSED:
            self.refused += 1
        else:
            self.wrong += 1
        self.last = max(self.last, at)
        if isinstance(rhost, str) and rhost and len(self.rhosts) < MAX_HOSTS:
            self.rhosts.add(rhost)
        if isinstance(service, str) and service:
            self.services.add(service)

    def merge(self, other: Fact) -> None:
        self.wrong += other.wrong
        self.refused += other.refused
        self.at, self.last = min(self.at, other.at), max(self.last, other.last)
        self.rhosts |= set(sorted(other.rhosts)[: MAX_HOSTS - len(self.rhosts)])
        self.services |= other.services


@dataclass(slots=True)
class _Recent:
    """A user's answers not yet told about: (time, outcome, rhost, service), newest last."""

    answers: collections.deque[tuple[float, object, object, object]]
    open: Fact | None = None  # the burst fact in the window being gathered


class Notifier:
    """Notes facts from audit records (`observe`) and mails them in batches (`start`)."""

    def __init__(
        self,
        settings: Callable[[], Config],
        mailer: Mailer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings  # read per record and per batch: a reload applies at once
        self._mailer = mailer
        self._clock = clock
        self._audit: AuditLog | None = None
        self._noted: list[Fact] = []  # the window being gathered
        self._outbox: list[Fact] = []  # taken from windows, not yet sent
        self._untold: collections.Counter[str] = collections.Counter()  # past MAX_FACTS
        self._recent: dict[str, _Recent] = {}
        self._swept = 0.0  # when _recent was last cleared of quiet users
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- noting (the AuditLog's observer: on the loop, must be quick and never raise) ---

    def observe(self, event: str, fields: Mapping[str, Any]) -> None:
        """One record the audit log wrote."""
        try:
            self._observe(event, fields)
        except Exception:  # a bug here must not fail the login that wrote the record
            log.exception("notify_observe_error", audit_event=event)

    def _observe(self, event: str, fields: Mapping[str, Any]) -> None:
        notify = self._settings().notify
        if not notify.admins:
            return
        now = self._clock()
        if event == Event.ATTEMPT:
            if "failures" in notify.events and fields.get("outcome") in _COUNTED:
                self._count(fields, now, notify.failure_burst, notify.batch_seconds)
            return
        kind = _kind(event, fields)
        if kind is not None and kind in notify.events:
            self._note(Fact(kind, _text(fields.get("user")), now, _details(event, fields)))

    def _note(self, fact: Fact) -> bool:
        """Add a fact to the window; False if it is only counted (MAX_FACTS reached)."""
        self._wake.set()
        if len(self._noted) + len(self._outbox) < MAX_FACTS:
            self._noted.append(fact)
            return True
        self._untold[fact.kind] += 1
        return False

    def _count(self, fields: Mapping[str, Any], now: float, burst: int, window: float) -> None:
        user = fields.get("user")
        if not isinstance(user, str) or not user:
            return
        answer = (now, fields.get("outcome"), fields.get("rhost"), fields.get("service"))
        recent = self._recent.get(user)
        if recent is None:
            if len(self._recent) >= MAX_TRACKED:
                if now - self._swept >= window:  # a sweep per window at most, not per answer
                    self._swept = now
                    self._forget_quiet(now - window)
                if len(self._recent) >= MAX_TRACKED:
                    return  # a spray over more users than that: their locks are told
            recent = self._recent[user] = _Recent(collections.deque(maxlen=burst))
        if recent.open is not None:  # told in this window already: count on
            recent.open.count(*answer[1:], at=now)
            return
        if recent.answers.maxlen != burst:  # notify.failure_burst changed on reload
            recent.answers = collections.deque(recent.answers, maxlen=burst)
        while recent.answers and recent.answers[0][0] <= now - window:
            recent.answers.popleft()
        recent.answers.append(answer)
        if len(recent.answers) >= burst:
            fact = Fact("failures", user, recent.answers[0][0])
            for at, outcome, rhost, service in recent.answers:
                fact.count(outcome, rhost, service, at)
            recent.answers.clear()
            if self._note(fact):  # else only counted: the next burst is counted anew
                recent.open = fact

    def _forget_quiet(self, before: float) -> None:
        """Stop counting for users with no answer since `before` and nothing being told."""
        for user in [
            u
            for u, r in self._recent.items()
            if r.open is None and (not r.answers or r.answers[-1][0] <= before)
        ]:
            del self._recent[user]

    # --- sending (a task of its own) ---

    def start(self, audit: AuditLog) -> None:
        """Send what is noted from now on; `audit` records each try."""
        self._audit = audit
        self._task = asyncio.create_task(self._run(), name="mfad-notify")

    async def close(self) -> None:
        """Stop; what is noted and unsent gets one last try, of at most FINAL_TRY seconds
        (systemd's stop timeout also waits for the logins in flight and the fleet copy)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._take()
        if not self._outbox:
            return
        told = len(self._outbox) + sum(self._untold.values())
        try:
            async with asyncio.timeout(FINAL_TRY):
                await self._try(attempt=1, retry_in=None)
        except TimeoutError:
            await self._record(
                Event.NOTICE_FAILED,
                outcome=Outcome.ERROR,
                reason=f"mfad stopped before the SMTP server took the message (waited "
                f"{FINAL_TRY:g} s); the audit trail has the records",
                facts=told,
                attempt=1,
                gave_up=True,
            )

    async def _run(self) -> None:
        while True:
            try:
                await self._wake.wait()
                await asyncio.sleep(self._settings().notify.batch_seconds)
                await self._deliver()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the notices for good
                log.exception("notify_error")
                await asyncio.sleep(RETRY_MAX)

    async def _deliver(self) -> None:
        """Send the window's facts; on failure wait and try again, with later facts added."""
        delay = self._settings().notify.batch_seconds
        began, attempt = self._clock(), 0
        while True:
            self._take()
            attempt += 1
            given_up = self._clock() - began >= GIVE_UP
            if await self._try(attempt, retry_in=None if given_up else delay):
                return
            if given_up:
                self._outbox.clear()
                self._untold.clear()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _take(self) -> None:
        """Move the window's facts to the outbox; a user's bursts of wrong answers become one."""
        self._wake.clear()
        bursts = {f.user: f for f in self._outbox if f.kind == "failures"}
        for fact in self._noted:
            if fact.kind == "failures":
                recent = self._recent.get(fact.user)
                if recent is not None and recent.open is fact:
                    recent.open = None  # later answers start a new count
                if fact.user in bursts:
                    bursts[fact.user].merge(fact)
                    continue
                bursts[fact.user] = fact
            self._outbox.append(fact)
        self._noted = []

    async def _try(self, attempt: int, retry_in: float | None) -> bool:
        """One try to send the outbox; recorded either way. True if it was sent."""
        admins = self._settings().notify.admins
        if not admins:  # notices were turned off by a reload meanwhile
            self._outbox.clear()
            self._untold.clear()
            return True
        host = self._audit.host if self._audit is not None else ""
        facts, untold = list(self._outbox), sum(self._untold.values())
        subject, body = render(facts, self._untold, host)
        try:
            await self._mailer.send(admins, subject, body, domain=host or None)
        except MailError as exc:
            log.warning("notice_unsent", error=str(exc), attempt=attempt, retry_in_s=retry_in)
            await self._record(
                Event.NOTICE_FAILED,
                outcome=Outcome.ERROR,
                reason=str(exc),
                facts=len(facts) + untold,
                attempt=attempt,
                retry_in_s=retry_in,
                gave_up=True if retry_in is None else None,
            )
            return False
        self._outbox.clear()
        self._untold.clear()
        await self._record(
            Event.NOTICE_SENT,
            outcome=Outcome.SUCCESS,
            to=list(admins),
            facts=len(facts) + untold,
            attempt=attempt,
        )
        return True

    async def _record(self, event: Event, **fields: Any) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.record(event, **fields)
        except AuditError as exc:  # the mail went (or not) all the same
            log.error("audit_unwritable", error=str(exc), event_lost=event)


# --- from records to facts, and from facts to a message ---


def _kind(event: str, fields: Mapping[str, Any]) -> str | None:
    """The notice a record is, if any (whether it is wanted is the config's to say)."""
    if event == Event.CONTROL:
        if fields.get("outcome") in (Outcome.SUCCESS, Outcome.ERROR):  # not refusals
            op = fields.get("op")
            if op == "enroll_confirm":  # an enrolment is news only as the way back
                return "self_enrol" if fields.get("before") == "suspended" else None
            return op if isinstance(op, str) else None
    elif event == Event.EMAIL_CODE:
        mailed = fields.get("purpose") == "recovery" and fields.get("outcome") == Outcome.SUCCESS
        return "email_recovery" if mailed else None
    elif event == Event.STATE_CHANGED:
        return _STATES.get(str(fields.get("state")))
    elif event == Event.LOCK_SET:
        return _LOCKS.get(str(fields.get("reason")))
    return None


def _details(event: str, fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What an administrator needs to know of one record, field by chosen field."""
    get = fields.get
    lines: list[tuple[str, str]] = []
    if event == Event.CONTROL:
        lines.append(("by", f"{_text(get('actor'))} (uid {_text(get('actor_uid'))})"))
        if get("before") is not None or get("after") is not None:
            lines.append(("change", f"{_text(get('before'))} -> {_text(get('after'))}"))
        if get("outcome") == Outcome.ERROR:
            lines.append(("result", f"FAILED: {_text(get('reason'))}"))
        elif get("reason") is not None:
            lines.append(("reason", _text(get("reason"))))
        if get("until") is not None:
            lines.append(("until", _text(get("until"))))
    elif event == Event.EMAIL_CODE:
        lines.append(("by", "the user, at the code prompt (a lost device)"))
        lines.append(("sent to", _text(get("address"))))
    elif event == Event.STATE_CHANGED:
        lines.append(("by", "a login (no administrator)"))
        lines.append(("change", f"-> {_text(get('state'))}"))
        lines.append(("reason", _text(get("reason"))))
    elif event == Event.LOCK_SET:
        lines.append(("after", f"{_text(get('failures'))} wrong answers"))
        lines.append(("locked until", _text(get("until") or "an administrator unlocks it")))
    for label, key in (("service", "service"), ("remote host", "rhost"), ("tty", "tty")):
        if get(key):
            lines.append((label, _text(get(key))))
    return lines


def _burst_lines(fact: Fact) -> list[tuple[str, str]]:
    answers = f"{fact.wrong} wrong"
    if fact.refused:
        answers += f", {fact.refused} refused unchecked (locked or blocked)"
    lines = [("answers", answers), ("last answer", iso(fact.last) or "")]
    if fact.rhosts:
        lines.append(("remote hosts", ", ".join(sorted(fact.rhosts))))
    if fact.services:
        lines.append(("services", ", ".join(sorted(fact.services))))
    return lines


def render(facts: list[Fact], untold: Mapping[str, int], host: str) -> tuple[str, str]:
    """(subject, body) of the message listing `facts`, oldest first."""
    facts = sorted(facts, key=lambda f: f.at)
    heads = ", ".join(f"{f.kind} {f.user}" for f in facts)
    more = sum(untold.values())
    summary = heads if len(facts) == 1 and not more else f"{len(facts) + more} notices: {heads}"
    if len(summary) > 120:
        summary = summary[:119] + "…"
    out = [f"mfad on {host} recorded in its audit trail:", ""]
    for fact in facts:
        out.append(f"{fact.kind} {fact.user}")
        lines = [("time", iso(fact.at) or ""), ("host", host), *fact.details]
        if fact.kind == "failures":
            lines += _burst_lines(fact)
        out += [f"  {label}: {value}" for label, value in lines]
        out.append("")
    if more:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(untold.items()))
        out += [f"and {more} more not listed here ({counts}).", ""]
    since = iso(facts[0].at) if facts else None
    out.append(f"The records: mfa audit --since {since}" if since else "The records: mfa audit")
    out.append("This message never holds a code, a key or a recovery code.")
    return f"[mfad {host}] {summary}", "\n".join(out) + "\n"


def _text(value: object) -> str:
    """A value as one line of printable text, bounded (it may be an administrator's words)."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"

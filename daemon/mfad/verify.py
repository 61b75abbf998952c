"""The one place a code is checked, for every purpose and on either socket, always under the guard.

A login's code or recovery code, the code that confirms an enrolment (at login
or by ``mfa enroll``), the code that proves the token before ``mfa
recovery-codes --regenerate``: each goes through ``Verifier.check``; the two
codes of ``mfa resync`` through ``Verifier.resync``. A token is TOTP (time
steps, totp.py) or HOTP (a counter, hotp.py); both mark what they used with
the one store.consume_step. A code mailed to the user (emailcodes: the email
method's, a lost device's recovery code, an address's confirmation) is spent
with store.take_email_code. There is no
second way to test a code, so each of them gets the same per-user lock, the
same counting, back-off, source block, account lock and lifetime cap
(lockout.py), and the same audit records. A locked account gets no code check
anywhere: the answer is refused unseen, after the delay a wrong code would get.

Records written here: ``attempt`` for every answer not accepted (with its
reason, the purpose and the delay served), ``lock_set`` and
``source_blocked`` when a failure sets one, ``recovery_code_used``, and
``clock_anomaly`` when a code is refused because a later step was already used
(the wall clock stepped back, or the phone's was ahead).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mfa_wire.events import Event, Outcome, Reason
from mfad import emailcodes, hotp, recovery, totp
from mfad.lockout import FailureEffect, Refusal
from mfad.model import Account, CodePurpose, Kind, PendingEnrolment, Site, TokenParams
from mfad.times import iso

if TYPE_CHECKING:
    from mfad.context import Context


class Purpose(enum.Enum):
    LOGIN = "login"  # the active token or a recovery code; a success is a login
    PROOF = "proof"  # the same, to show the token is at hand (control socket); not a login
    ENROL = "enrol"  # the code of a secret held aside, to confirm it
    RESYNC = "resync"  # two consecutive codes of an HOTP token pressed past the look-ahead


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose code, from where. `account` None (an unknown user, or no token) gets a decoy
    check that costs what a real one does and always fails."""

    user: str  # canonical name; as typed only for a name NSS does not know
    source: str  # the guard's source key: lockout.login_source / control_source
    site: Site
    account: Account | None = None
    pending: PendingEnrolment | None = None  # Purpose.ENROL
    # a code mailed to the user (emailcodes) that this answer may be, and what for
    mailed: CodePurpose | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str | None  # None: accepted
    # when accepted: "totp", "hotp", "recovery", "enrolment", or for a mailed code "email",
    # "email_recovery" or "address" (emailcodes.METHODS)
    method: str = ""
    refusal: Refusal | None = None  # locked or blocked, before or by this answer
    remaining: int | None = None  # recovery codes left after one was spent
    step: int | None = None  # the time step of an accepted TOTP code, an HOTP code's counter

    @property
    def ok(self) -> bool:
        return self.reason is None


class Verifier:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def check(
        self, subject: Subject, answer: str, purpose: Purpose, **fields: Any
    ) -> Verdict:
        """Judge one answer; count it, record it, serve the back-off, then return the verdict.

        `fields` go into every record (the session's or the control request's context).
        """
        fields = {"user": subject.user, "purpose": purpose.value, **fields}
        return await self._guarded(
            subject, lambda now: self._judge(subject, answer, purpose, now, fields), fields
        )

    async def resync(self, subject: Subject, first: str, second: str, **fields: Any) -> Verdict:
        """Bring an HOTP token pressed past the look-ahead back: `first` and `second` must be
        the codes of two consecutive counters after the last one used (hotp.RESYNC_WINDOW);
        the second's counter then counts as used. One answer to the guard, like any code."""
        fields = {"user": subject.user, "purpose": Purpose.RESYNC.value, **fields}
        return await self._guarded(
            subject, lambda now: self._judge_resync(subject, first, second, now), fields
        )

    async def _guarded(
        self,
        subject: Subject,
        judge: Callable[[float], Awaitable[tuple[Verdict, dict[str, Any]]]],
        fields: dict[str, Any],
    ) -> Verdict:
        ctx, now = self.ctx, self.ctx.clock()
        effect: FailureEffect | None = None
        began = time.perf_counter()  # timed: guard lock, check, counters; not the back-off
        async with ctx.guard.attempt(subject.user, subject.source, now) as attempt:
            if attempt.refusal is not None:
                verdict = Verdict(attempt.refusal.reason, refusal=attempt.refusal)
                delay = attempt.refusal.delay
                await attempt.refused()
            else:
                verdict, details = await judge(now)
                if verdict.ok:
                    await attempt.succeeded()
                    ctx.metrics.verify_seconds.observe(time.perf_counter() - began)
                    return verdict
                effect = await attempt.failed()
                delay = effect.delay
        ctx.metrics.verify_seconds.observe(time.perf_counter() - began)
        if effect is not None:
            await ctx.audit.record(
                Event.ATTEMPT,
                outcome=Outcome.FAILURE,
                reason=verdict.reason,
                delay_s=delay,
                **details,
                **fields,
            )
            verdict = await self._record_effect(verdict, effect, fields)
        else:
            await ctx.audit.record(
                Event.ATTEMPT,
                outcome=Outcome.REFUSED,
                reason=verdict.reason,
                delay_s=delay,
                **fields,
            )
        await asyncio.sleep(delay)
        return verdict

    async def _record_effect(
        self, verdict: Verdict, effect: FailureEffect, fields: dict[str, Any]
    ) -> Verdict:
        audit = self.ctx.audit
        if effect.locked_until is not None:
            await audit.record(
                Event.LOCK_SET,
                outcome=Outcome.LOCKED,
                until=iso(effect.locked_until),
                failures=effect.failures,
                reason=Reason.LIFETIME_CAP if effect.capped else Reason.DENY,
                **fields,
            )
            return Verdict(verdict.reason, refusal=Refusal(Reason.LOCKED, effect.locked_until))
        if effect.blocked_until is not None:
            await audit.record(
                Event.SOURCE_BLOCKED,
                outcome=Outcome.BLOCKED,
                until=iso(effect.blocked_until),
                **fields,
            )
            return Verdict(
                verdict.reason, refusal=Refusal(Reason.SOURCE_BLOCKED, effect.blocked_until)
            )
        return verdict

    async def _judge(
        self,
        subject: Subject,
        answer: str,
        purpose: Purpose,
        now: float,
        fields: dict[str, Any],
    ) -> tuple[Verdict, dict[str, Any]]:
        """The verdict on `answer`, and what an administrator should see about a wrong one."""
        window = self.ctx.config.totp.window
        if subject.mailed is not None:
            mailed = emailcodes.normalise(answer, self.ctx.config.email.digits)
            if mailed is not None and await self._take_mailed(subject, mailed, purpose, now):
                return Verdict(None, emailcodes.METHODS[subject.mailed]), {}
            # not the mailed code: a token's code or a recovery code may still be right
        if purpose is Purpose.ENROL:
            return self._judge_pending(subject.pending, answer, now), {}
        account = subject.account
        params = account.params if account is not None else self._default_params()
        code = totp.normalise(answer, params.digits)
        if code is None:
            spare = recovery.normalise(answer)
            if spare is None:
                return Verdict(Reason.MALFORMED_CODE), {}
            login = subject.site if purpose is Purpose.LOGIN else None
            return await self._spend_recovery_code(subject, spare, now, login, fields), {}
        if account is not None and account.sealed_secret is not None and params.kind is Kind.HOTP:
            return await self._judge_hotp(account, subject.site, code, purpose, now)
        sealed = account.sealed_secret if account is not None else None
        found, far = self._match(account.user if account else "", sealed, params, code, now)
        if account is None or found is None:
            if far is None:
                return Verdict(Reason.INCORRECT_CODE), {}
            return Verdict(Reason.INCORRECT_CODE), {"suspected_clock_offset_s": far * params.period}
        login = subject.site if purpose is Purpose.LOGIN else None
        if await self.ctx.store.consume_step(account.user, found.step, found.offset, now, login):
            return Verdict(None, "totp", step=found.step), {}
        current = int(now // params.period)
        if account.last_step is not None and account.last_step > current + window:
            await self.ctx.audit.record(
                Event.CLOCK_ANOMALY,
                outcome=Outcome.ERROR,
                last_used_step=account.last_step,
                current_step=current,
                reason="a later time step than now was already used: "
                "this host's clock stepped back, or was ahead when that code was accepted",
                **fields,
            )
        return Verdict(Reason.REPLAYED_CODE), {}

    async def _take_mailed(self, subject: Subject, code: str, purpose: Purpose, now: float) -> bool:
        """Whether `code` is the code mailed to the user: the outstanding one for this
        purpose, unexpired; spent atomically (store.take_email_code), so it works once."""
        assert subject.mailed is not None
        digest = emailcodes.digest_of(self.ctx, subject.user, subject.mailed, code)
        login = subject.site if purpose is Purpose.LOGIN else None
        return await self.ctx.store.take_email_code(
            subject.user, digest, subject.mailed, now, login
        )

    async def _judge_hotp(
        self, account: Account, site: Site, code: str, purpose: Purpose, now: float
    ) -> tuple[Verdict, dict[str, Any]]:
        """An HOTP token's code: a counter within the look-ahead after the last one used,
        marked used atomically (store.consume_step, the TOTP rule: the same or an earlier
        counter is refused, and of two parallel logins with one code one succeeds)."""
        assert account.sealed_secret is not None
        look_ahead = self.ctx.config.hotp.look_ahead
        secret = self.ctx.box.open(account.user, account.sealed_secret)
        found = hotp.match(secret, account.params, code, account.last_step, look_ahead)
        if found is None:
            return Verdict(Reason.INCORRECT_CODE), {}
        if found.replayed:
            return Verdict(Reason.REPLAYED_CODE), {"counter": found.counter}
        login = site if purpose is Purpose.LOGIN else None
        if await self.ctx.store.consume_step(account.user, found.counter, 0, now, login):
            return Verdict(None, "hotp", step=found.counter), {}
        return Verdict(Reason.REPLAYED_CODE), {"counter": found.counter}

    async def _judge_resync(
        self, subject: Subject, first: str, second: str, now: float
    ) -> tuple[Verdict, dict[str, Any]]:
        account = subject.account
        params = account.params if account is not None else self._default_params()
        one, two = totp.normalise(first, params.digits), totp.normalise(second, params.digits)
        if one is None or two is None:
            return Verdict(Reason.MALFORMED_CODE), {}
        if account is None or account.sealed_secret is None or params.kind is not Kind.HOTP:
            return Verdict(Reason.INCORRECT_CODE), {}
        secret = self.ctx.box.open(account.user, account.sealed_secret)
        # about 5 ms for the 1000 counters: off the loop, so no login waits behind it
        counter = await asyncio.to_thread(hotp.resync, secret, params, one, two, account.last_step)
        if counter is None:
            return Verdict(Reason.INCORRECT_CODE), {}
        if await self.ctx.store.consume_step(account.user, counter, 0, now, None):
            return Verdict(None, "hotp", step=counter), {"counter": counter}
        return Verdict(Reason.REPLAYED_CODE), {}

    def _judge_pending(self, pending: PendingEnrolment | None, answer: str, now: float) -> Verdict:
        params = pending.params if pending is not None else self._default_params()
        code = totp.normalise(answer, params.digits)
        if code is None:
            return Verdict(Reason.MALFORMED_CODE)
        sealed = pending.sealed_secret if pending is not None else None
        found, _ = self._match(pending.user if pending else "", sealed, params, code, now)
        if found is None:
            return Verdict(Reason.INCORRECT_CODE)
        return Verdict(None, "enrolment", step=found.step)

    def _match(
        self, user: str, sealed: bytes | None, params: TokenParams, code: str, now: float
    ) -> tuple[totp.Match | None, int | None]:
        """The one TOTP comparison: the step `code` was made for, or the far-off offset of a
        drifting phone (never accepted). No secret: the same work on a dummy, never a match."""
        window = self.ctx.config.totp.window
        if sealed is None:
            # an unknown user's decoy costs what an app's code does (most tokens are TOTP)
            totp.decoy(params, code, now, window)
            return None, None
        secret = self.ctx.box.open(user, sealed)
        found = totp.match(secret, params, code, now, window)
        if found is not None:
            return found, None
        return None, totp.far_offset(secret, params, code, now, window)

    async def _spend_recovery_code(
        self,
        subject: Subject,
        code: str,
        now: float,
        login: Site | None,
        fields: dict[str, Any],
    ) -> Verdict:
        digest = self.ctx.box.digest(subject.user, code)
        if subject.account is None:
            return Verdict(Reason.INCORRECT_RECOVERY_CODE)
        left = await self.ctx.store.use_recovery_code(subject.user, digest, now, login)
        if left is None:
            return Verdict(Reason.INCORRECT_RECOVERY_CODE)
        await self.ctx.audit.record(
            Event.RECOVERY_CODE_USED, outcome=Outcome.SUCCESS, remaining=left, **fields
        )
        return Verdict(None, "recovery", remaining=left)

    def _default_params(self) -> TokenParams:
        cfg = self.ctx.config.totp
        return TokenParams(cfg.algorithm, cfg.digits, cfg.period)

"""One login conversation on the PAM socket: START, prompts and answers, one RESULT.

This is the one place where exceptions become PAM outcomes: a broken peer
ends its own connection (audited as a protocol error); a store or audit
failure answers UNAVAILABLE, so the login fails closed.

Records written per login: ``challenge`` when a code is asked for, ``attempt``
for each wrong code with its reason, enrolment and recovery-code events, and
one ``login`` record with the final outcome, reason and duration (the
canonical line for this login).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from mfad import enrolment, nss, policy, recovery, totp
from mfad.context import Context
from mfad.errors import AuditError, MfaError, ProtocolError
from mfad.framing import encode, read_frame
from mfad.lockout import Refusal
from mfad.protocol import Outcome, Start, T, parse_start
from mfad.qrtext import render_qr
from mfad.store import Account, Site, StateChange, TokenParams

log = structlog.get_logger("mfad.session")

START_TIMEOUT = 10.0  # the module sends START right after connecting
MSG_INCORRECT = "Incorrect verification code."
MSG_TIMEOUT = "Correct verification code was not entered before timeout."
MSG_TOO_MANY = "Too many failed attempts with incorrect verification code."
MSG_UNAVAILABLE = "Verification is unavailable right now. Contact your administrator."
MSG_NOT_ENROLLED = (
    "Multi-factor authentication is required for this account, but it is not set up. "
    "Contact your administrator."
)
MSG_ENROLMENT_EXPIRED = (
    "Multi-factor authentication is required for this account and the time to set it up "
    "has passed. Contact your administrator."
)
MSG_ACKNOWLEDGE = "Press Enter once the recovery codes are saved: "
MSG_CONTINUE = "Press Enter to continue: "
MSG_ENROL_INTRO = (
    "Multi-factor authentication is now required for this account.\n"
    "Scan this QR code with an authenticator app (or type in the key below),\n"
    "then enter the code it shows."
)


class _PromptTimeout(Exception):
    """The user did not answer within prompt_timeout."""


class _PeerGone(Exception):
    """The module closed the connection mid-conversation."""


@dataclass(frozen=True, slots=True)
class Check:
    reason: str | None  # None: the answer was right
    details: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    refusal: Refusal | None = None  # locked or blocked, now or already
    method: str = "totp"


def _iso(ts: float) -> str | None:
    return None if math.isinf(ts) else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _refusal_message(refusal: Refusal) -> str:
    if math.isinf(refusal.until):
        when = "until an administrator unlocks it"
    else:
        when = "until " + datetime.fromtimestamp(refusal.until, UTC).strftime("%H:%M UTC")
    if refusal.reason == "locked":
        return f"The account is locked after too many failed attempts, {when}."
    return f"Too many failed attempts from this host; verification is blocked {when}."


_SESSION_PREFIX = secrets.token_hex(4)  # one random draw per daemon start
_session_numbers = itertools.count(1)


def _next_session_id() -> str:
    """Unique per login across restarts; no secrecy needed, so no random draw per login
    (the profile showed getrandom among the top costs of a login)."""
    return f"{_SESSION_PREFIX}-{next(_session_numbers):x}"


class LoginSession:
    def __init__(
        self, ctx: Context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        self.ctx = ctx
        self.config = ctx.config  # one config for the whole conversation, even across a reload
        self.reader = reader
        self.writer = writer
        self.fields: dict[str, Any] = {"session": _next_session_id(), "peer": peer}
        self.started = time.monotonic()

    async def run(self, on_start: Callable[[], None] = lambda: None) -> None:
        """Serve one connection; never raises for what a peer or the disk does.

        `on_start` is called once the START frame is in, so the server stops
        treating this connection as an idle one it may evict.
        """
        try:
            async with asyncio.timeout(START_TIMEOUT):
                frame = await read_frame(self.reader)
            if frame is None:
                return
            on_start()
            start = parse_start(frame)
            self.fields.update(
                user=start.user, service=start.service, rhost=start.rhost,
                ruser=start.ruser, tty=start.tty,
            )
            outcome = await self._login(start)
        except (ProtocolError, TimeoutError) as exc:
            # Answer FAILURE before closing: a module with fail=open treats a silent drop
            # before the daemon's first frame as "daemon down", and a bad START (an odd user
            # name) must never turn into PAM_IGNORE.
            reason = str(exc) if isinstance(exc, ProtocolError) else "no START frame in time"
            await self._record_quietly("protocol_error", outcome="error", reason=reason)
            outcome = Outcome.FAILURE
        except _PromptTimeout:
            await self._finish("failure", "timeout")
            await self._send(T.ERROR, MSG_TIMEOUT)
            outcome = Outcome.FAILURE
        except _PeerGone:
            await self._record_quietly("login", outcome="failure", reason="aborted")
            return
        except MfaError as exc:  # store, audit, or an account changed under our feet
            log.error("login_unavailable", error=str(exc), **self.fields)
            await self._record_quietly("login", outcome="error", reason="unavailable")
            await self._send(T.ERROR, MSG_UNAVAILABLE)
            outcome = Outcome.UNAVAILABLE
        await self._send(T.RESULT, outcome.value)

    async def _login(self, start: Start) -> Outcome:
        ctx, config, now = self.ctx, self.config, self.ctx.clock()
        account = await ctx.store.get_account(start.user)
        if account is not None and policy.exemption_expired(account, now):
            account = await self._end_exemption(account, now)
        groups: frozenset[str] = frozenset()
        if policy.needs_groups(config, account, now):
            groups = await asyncio.to_thread(nss.groups_of, start.user)
        decision = policy.decide(config, start.service, account, groups, now)
        if decision.action is policy.Action.SKIP:
            await self._finish("skipped", decision.reason)
            return Outcome.SKIP
        if decision.action is policy.Action.ENROL:
            if await asyncio.to_thread(nss.user_exists, start.user):
                return await self._must_enrol(account, decision.reason)
            decision = policy.Decision(policy.Action.CODE, "unknown_user")
        refusal = await ctx.guard.refusal(start.user, start.rhost, now)
        if refusal is not None and not config.lockout.silent:
            await self._finish("failure", refusal.reason)
            await self._send(T.ERROR, _refusal_message(refusal))
            return Outcome.FAILURE
        await ctx.audit.record("challenge", outcome="pending", method="totp", **self.fields)
        has_token = account is not None and account.sealed_secret is not None
        return await self._ask_for_code(account if has_token else None)

    async def _end_exemption(self, account: Account, now: float) -> Account | None:
        """An exemption past its expiry ends here, for good: back to the kept token, or none."""
        change = StateChange("active" if account.sealed_secret is not None else "disabled")
        await self.ctx.store.set_state(account.user, change, now)
        await self.ctx.audit.record(
            "state_changed", outcome="success", state=change.state, reason="exemption_expired",
            **self.fields,
        )
        return await self.ctx.store.get_account(account.user)

    # --- code prompt ---

    async def _ask_for_code(self, account: Account | None) -> Outcome:
        attempts = self.config.login.max_attempts
        for attempt in range(1, attempts + 1):
            answer = await self._prompt(self.config.login.prompt)
            check = await self._check(account, answer)
            if check.reason is None:
                await self._finish("success", "correct_code", method=check.method,
                                   attempts=attempt)
                return Outcome.SUCCESS
            await self.ctx.audit.record(
                "attempt", outcome="failure", reason=check.reason, attempt=attempt,
                **check.details, **self.fields,
            )
            await asyncio.sleep(check.delay)
            if check.refusal is not None and not self.config.lockout.silent:
                await self._finish("failure", check.refusal.reason, attempts=attempt)
                await self._send(T.ERROR, _refusal_message(check.refusal))
                return Outcome.FAILURE
            if attempt < attempts:
                await self._send(T.ERROR, MSG_INCORRECT)
        await self._finish("failure", "too_many_attempts", attempts=attempts)
        await self._send(T.ERROR, MSG_TOO_MANY)
        return Outcome.MAXTRIES

    async def _check(self, account: Account | None, answer: str) -> Check:
        """Judge one answer under the user's guard: refused unseen, right, or counted wrong."""
        user, rhost = self.fields["user"], self.fields["rhost"]
        now = self.ctx.clock()
        async with self.ctx.guard.attempt(user, rhost, now) as attempt:
            if attempt.refusal is not None:
                return Check(attempt.refusal.reason, refusal=attempt.refusal)
            reason, details, method = await self._verify(account, answer, now)
            if reason is None:
                await attempt.succeeded()
                return Check(None, method=method)
            effect = await attempt.failed()
        refusal = None
        if effect.locked_until is not None:
            refusal = Refusal("locked", effect.locked_until)
            await self.ctx.audit.record(
                "lock_set", outcome="locked", until=_iso(effect.locked_until),
                failures=effect.failures, **self.fields,
            )
        elif effect.blocked_until is not None:
            refusal = Refusal("source_blocked", effect.blocked_until)
            await self.ctx.audit.record(
                "source_blocked", outcome="blocked", until=_iso(effect.blocked_until),
                **self.fields,
            )
        return Check(reason, details, effect.delay, refusal)

    async def _verify(
        self, account: Account | None, answer: str, now: float
    ) -> tuple[str | None, dict[str, Any], str]:
        """(None, {}, method) for a right answer, else the reason and what the admin should see."""
        window = self.config.totp.window
        params = account.params if account is not None else TokenParams()
        code = totp.normalise(answer, params.digits)
        if code is None:
            spare = recovery.normalise(answer)
            if spare is None:
                return "malformed_code", {}, ""
            return await self._spend_recovery_code(account, spare, now)
        if account is None or account.sealed_secret is None:
            totp.decoy(params, code, now, window)
            return "incorrect_code", {}, ""
        secret = self.ctx.box.open(account.user, account.sealed_secret)
        found = totp.match(secret, params, code, now, window)
        if found is None:
            far = totp.far_offset(secret, params, code, now, window)
            if far is None:
                return "incorrect_code", {}, ""
            return "incorrect_code", {"suspected_clock_offset_s": far * params.period}, ""
        used = await self.ctx.store.consume_step(
            account.user, found.step, found.offset, now,
            Site(self.fields["service"], self.fields["rhost"]),
        )
        return (None, {}, "totp") if used else ("replayed_code", {}, "")

    async def _spend_recovery_code(
        self, account: Account | None, code: str, now: float
    ) -> tuple[str | None, dict[str, Any], str]:
        user = self.fields["user"]
        digest = self.ctx.box.digest(user, code)
        if account is None:
            return "incorrect_recovery_code", {}, ""
        left = await self.ctx.store.use_recovery_code(
            user, digest, now, self.fields["rhost"], self.fields["service"]
        )
        if left is None:
            return "incorrect_recovery_code", {}, ""
        await self.ctx.audit.record(
            "recovery_code_used", outcome="success", remaining=left, **self.fields
        )
        if left <= recovery.WARN_AT:
            await self._send(
                T.INFO,
                f"Only {left} recovery code{'s' if left != 1 else ''} left. "
                "Make new ones with `mfa recovery-codes --regenerate`.",
            )
            await self._acknowledge(MSG_CONTINUE)
        return None, {}, "recovery"

    # --- enrolment at login ---

    async def _must_enrol(self, account: Account | None, reason: str) -> Outcome:
        """A user who must enrol: offer it now, or refuse with what to do."""
        ctx, config, now = self.ctx, self.config, self.ctx.clock()
        deadline = account.deadline if account is not None and account.state == "pending" else None
        if account is None or account.state != "pending":
            grace = config.enrolment.grace_days * 86400
            deadline = now + grace if grace > 0 else None
            await ctx.store.set_state(self.fields["user"], StateChange("pending", deadline), now)
            await ctx.audit.record(
                "state_changed", outcome="success", state="pending", reason=reason,
                deadline=_iso(deadline) if deadline else None, **self.fields,
            )
        if deadline is not None and deadline <= now:
            await self._finish("failure", "enrolment_expired")
            await self._send(T.ERROR, MSG_ENROLMENT_EXPIRED)
            return Outcome.FAILURE
        if not config.enrolment.at_login:
            await self._finish("failure", "not_enrolled")
            await self._send(T.ERROR, MSG_NOT_ENROLLED)
            return Outcome.FAILURE
        return await self._enrol()

    async def _enrol(self) -> Outcome:
        user = self.fields["user"]
        offer = await enrolment.begin(self.ctx, user, reoffer=True)
        await self.ctx.audit.record("enrolment_started", outcome="pending", method="login",
                                    **self.fields)
        await self._send(T.INFO, "\n".join([
            MSG_ENROL_INTRO, render_qr(offer.uri), offer.uri,
            f"Key: {enrolment.key_groups(offer.secret)}",
        ]))
        attempts = self.config.login.max_attempts
        for attempt in range(1, attempts + 1):
            codes = await enrolment.confirm(self.ctx, user, await self._prompt(
                self.config.login.prompt))
            if codes is not None:
                await self.ctx.audit.record("enrolment_confirmed", outcome="success",
                                            method="login", **self.fields)
                await self._send(T.INFO, "\n".join([
                    "Enrolment complete. Your recovery codes (each works once, in place of a "
                    "code; keep them somewhere safe, they are not shown again):",
                    *(f"  {c}" for c in codes),
                ]))
                await self._acknowledge(MSG_ACKNOWLEDGE)
                await self._finish("success", "enrolled", method="enrolment", attempts=attempt)
                return Outcome.SUCCESS
            await self.ctx.audit.record("attempt", outcome="failure", reason="incorrect_code",
                                        attempt=attempt, method="enrolment", **self.fields)
            if attempt < attempts:
                await self._send(T.ERROR, MSG_INCORRECT)
        await self._finish("failure", "too_many_attempts", method="enrolment", attempts=attempts)
        await self._send(T.ERROR, MSG_TOO_MANY)
        return Outcome.MAXTRIES

    async def _acknowledge(self, prompt: str) -> None:
        """A last prompt that carries the INFO before it to the screen.

        sshd delivers PAM messages together with the next prompt; messages after the
        last one become an SSH banner, which `ssh -q` hides. Recovery codes are shown
        only once and a low-codes warning matters, so they come with a prompt. What
        was decided stands either way: no answer, a timeout or a drop change nothing.
        """
        self.writer.write(encode(T.PROMPT_ON, prompt))
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, ProtocolError):
            await self.writer.drain()
            async with asyncio.timeout(self.config.login.prompt_timeout):
                await read_frame(self.reader)

    # --- plumbing ---

    async def _prompt(self, text: str) -> str:
        """Ask with echo off; the answer, or _PromptTimeout / _PeerGone."""
        await self._send(T.PROMPT_OFF, text)
        try:
            async with asyncio.timeout(self.config.login.prompt_timeout):
                frame = await read_frame(self.reader)
        except TimeoutError:
            raise _PromptTimeout from None
        if frame is None:
            raise _PeerGone
        if frame.type != T.ANSWER:
            raise ProtocolError(f"expected ANSWER, got a {frame.type!r} frame")
        return frame.payload

    async def _finish(self, outcome: str, reason: str, **extra: Any) -> None:
        duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        await self.ctx.audit.record(
            "login", outcome=outcome, reason=reason, duration_ms=duration_ms, **extra,
            **self.fields,
        )

    async def _record_quietly(self, event: str, **extra: Any) -> None:
        try:
            await self.ctx.audit.record(event, **extra, **self.fields)
        except AuditError as exc:
            log.error("audit_unwritable", error=str(exc), **self.fields)

    async def _send(self, ftype: str, payload: str) -> None:
        try:
            self.writer.write(encode(ftype, payload))
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass  # the module went away; its login is over either way

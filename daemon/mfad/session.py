"""One login conversation on the PAM socket: START, prompts and answers, one RESULT.

This is the one place where exceptions become PAM outcomes: a broken peer
ends its own connection (audited as a protocol error); a store or audit
failure answers UNAVAILABLE, so the login fails closed.

Records written per login: ``challenge`` when a code is asked for, ``attempt``
for each wrong code with its reason, and one ``login`` record with the final
outcome, reason and duration (the canonical line for this login).
"""

from __future__ import annotations

import asyncio
import math
import pwd
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from mfad import policy, totp
from mfad.context import Context
from mfad.errors import AuditError, ProtocolError, StoreError
from mfad.framing import encode, read_frame
from mfad.lockout import Refusal
from mfad.protocol import Outcome, Start, T, parse_start
from mfad.store import Account, TokenParams

log = structlog.get_logger("mfad.session")

START_TIMEOUT = 10.0  # the module sends START right after connecting
MSG_INCORRECT = "Incorrect verification code."
MSG_TIMEOUT = "Correct verification code was not entered before timeout."
MSG_TOO_MANY = "Too many failed attempts with incorrect verification code."
MSG_UNAVAILABLE = "Verification is unavailable right now. Contact your administrator."


@dataclass(frozen=True, slots=True)
class Check:
    reason: str | None  # None: the code was right
    details: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    refusal: Refusal | None = None  # locked or blocked, now or already


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


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


class LoginSession:
    def __init__(
        self, ctx: Context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        self.ctx = ctx
        self.config = ctx.config  # one config for the whole conversation, even across a reload
        self.reader = reader
        self.writer = writer
        self.fields: dict[str, Any] = {"session": secrets.token_hex(8), "peer": peer}
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
            reason = str(exc) if isinstance(exc, ProtocolError) else "no START frame in time"
            await self._record_quietly("protocol_error", outcome="error", reason=reason)
            return
        except (StoreError, AuditError) as exc:
            log.error("login_unavailable", error=str(exc), **self.fields)
            await self._record_quietly("login", outcome="error", reason="unavailable")
            await self._send(T.ERROR, MSG_UNAVAILABLE)
            await self._send(T.RESULT, Outcome.UNAVAILABLE.value)
            return
        if outcome is not None:
            await self._send(T.RESULT, outcome.value)

    async def _login(self, start: Start) -> Outcome | None:
        store, config = self.ctx.store, self.config
        account = await store.get_account(start.user)
        exists = True
        if config.mode == "required" and account is None:
            exists = await asyncio.to_thread(_user_exists, start.user)
        decision = policy.decide(config.mode, account, exists)
        if decision.action is policy.Action.SKIP:
            await self._finish("skipped", decision.reason)
            return Outcome.SKIP
        if decision.action is policy.Action.DENY:
            await self._finish("failure", decision.reason)
            if decision.message:
                await self._send(T.ERROR, decision.message)
            return Outcome.FAILURE
        refusal = await self.ctx.guard.refusal(start.user, start.rhost, self.ctx.clock())
        if refusal is not None and not config.lockout.silent:
            await self._finish("failure", refusal.reason)
            await self._send(T.ERROR, _refusal_message(refusal))
            return Outcome.FAILURE
        await self.ctx.audit.record("challenge", outcome="pending", method="totp", **self.fields)
        return await self._ask_for_code(account if decision.reason == "enrolled" else None)

    async def _ask_for_code(self, account: Account | None) -> Outcome | None:
        config = self.config
        for attempt in range(1, config.login.max_attempts + 1):
            await self._send(T.PROMPT_OFF, config.login.prompt)
            try:
                async with asyncio.timeout(config.login.prompt_timeout):
                    frame = await read_frame(self.reader)
            except TimeoutError:
                await self._finish("failure", "timeout", attempts=attempt - 1)
                await self._send(T.ERROR, MSG_TIMEOUT)
                return Outcome.FAILURE
            if frame is None:
                await self._finish("failure", "aborted", attempts=attempt - 1)
                return None
            if frame.type != T.ANSWER:
                raise ProtocolError(f"expected ANSWER, got a {frame.type!r} frame")
            check = await self._check(account, frame.payload)
            if check.reason is None:
                await self._finish("success", "correct_code", method="totp", attempts=attempt)
                return Outcome.SUCCESS
            await self.ctx.audit.record(
                "attempt", outcome="failure", reason=check.reason, attempt=attempt,
                **check.details, **self.fields,
            )
            await asyncio.sleep(check.delay)
            if check.refusal is not None and not config.lockout.silent:
                await self._finish("failure", check.refusal.reason, attempts=attempt)
                await self._send(T.ERROR, _refusal_message(check.refusal))
                return Outcome.FAILURE
            if attempt < config.login.max_attempts:
                await self._send(T.ERROR, MSG_INCORRECT)
        await self._finish("failure", "too_many_attempts", attempts=config.login.max_attempts)
        await self._send(T.ERROR, MSG_TOO_MANY)
        return Outcome.MAXTRIES

    async def _check(self, account: Account | None, answer: str) -> Check:
        """Judge one answer under the user's guard: refused unseen, right, or counted wrong."""
        user, rhost = self.fields["user"], self.fields["rhost"]
        guard = self.ctx.guard
        async with guard.hold(user):
            now = self.ctx.clock()
            refusal = await guard.refusal(user, rhost, now)
            if refusal is not None:
                return Check(refusal.reason, refusal=refusal)
            reason, details = await self._verify(account, answer, now)
            if reason is None:
                await guard.succeeded(user, rhost)
                return Check(None)
            effect = await guard.failed(user, rhost, now)
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
    ) -> tuple[str | None, dict[str, Any]]:
        """(None, {}) for a correct unused code, else the reason and what the admin should see."""
        window = self.config.totp.window
        params = account.params if account is not None else TokenParams()
        code = totp.normalise(answer, params.digits)
        if code is None:
            return "malformed_code", {}
        if account is None or account.sealed_secret is None:
            totp.decoy(params, code, now, window)
            return "incorrect_code", {}
        secret = self.ctx.box.open(account.user, account.sealed_secret)
        found = totp.match(secret, params, code, now, window)
        if found is None:
            far = totp.far_offset(secret, params, code, now, window)
            if far is None:
                return "incorrect_code", {}
            return "incorrect_code", {"suspected_clock_offset_s": far * params.period}
        used = await self.ctx.store.consume_step(
            account.user, found.step, found.offset, now,
            self.fields["rhost"], self.fields["service"],
        )
        return (None, {}) if used else ("replayed_code", {})

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

"""The login flow: who this is, what the rules say, the code or the enrolment, one outcome.

The frames themselves are conversation.py's; this module decides. It is the one
place where exceptions become PAM outcomes: a broken peer
ends its own connection (audited as a protocol error); a store or audit
failure answers UNAVAILABLE, so the login fails closed.

The name PAM gives is resolved through NSS first (identity.py): policy, guard,
store and audit see the canonical name, and an account that belongs to
another uid is never used. Every code is judged by the one verifier
(verify.py). A change the login makes (an exemption ending, a user becoming
pending) is recorded before it is made.

Records written per login: ``challenge`` when a code is asked for, the
verifier's ``attempt`` records for each answer not accepted, enrolment and
recovery-code events, and one ``login`` record with the final outcome, reason
and duration (the canonical line for this login). Whatever happens, even a bug,
the module gets a RESULT: a silent close before the first frame is what
``fail=open`` turns into a skip.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from mfa_wire.events import Event, Reason
from mfa_wire.events import Outcome as Recorded
from mfa_wire.frametypes import Outcome
from mfad import enrolment, identity, nss, policy, recovery
from mfad.context import Context
from mfad.conversation import Conversation, PeerGone, PromptTimeout
from mfad.errors import MfaError, ProtocolError, StaleAccount
from mfad.identity import Identity
from mfad.lockout import Refusal, login_source
from mfad.model import Account, Kind, Site, State, StateChange
from mfad.protocol import Start, parse_start
from mfad.qrtext import render_qr
from mfad.times import iso
from mfad.verify import Purpose, Subject, Verifier

log = structlog.get_logger("mfad.session")

MSG_INCORRECT = "Incorrect verification code."
# a right code whose time step was used already: the commonest "it says incorrect but it
# is right" (two logins in one 30 s step); telling it gives a guesser nothing usable
MSG_REPLAYED = "That code was already used. Wait for the next code and enter it."
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
MSG_STALE = (
    "The second factor kept for this user name belongs to an earlier account. "
    "Contact your administrator."
)
MSG_CODES = (
    "Enrolment complete. Your recovery codes (each works once, in place of a code; keep them "
    "somewhere safe, they are not shown again):"
)
MSG_ACKNOWLEDGE = "Press Enter once the recovery codes are saved: "
MSG_CONTINUE = "Press Enter to continue: "
MSG_ENROL_INTRO = (
    "Multi-factor authentication is now required for this account.\n"
    "Scan this QR code with an authenticator app (or type in the key below),\n"
    "then enter the code it shows."
)


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
        self.conv = Conversation(reader, writer, self.config.login.prompt_timeout)
        self.fields: dict[str, Any] = {"session": _next_session_id(), "peer": peer}
        self.trail = ctx.audit.bind(self.fields)  # every record of this login carries them
        self.started = time.monotonic()
        self.verifier = Verifier(ctx)
        self.site = Site("", "")

    async def run(self, on_start: Callable[[], None] = lambda: None) -> None:
        """Serve one connection; never raises for what a peer or the disk does.

        `on_start` is called once the START frame is in, so the server stops
        treating this connection as an idle one it may evict.
        """
        try:
            frame = await self.conv.start()
            if frame is None:
                return
            on_start()
            start = parse_start(frame)
            self.fields.update(
                user=start.user,
                service=start.service,
                rhost=start.rhost,
                ruser=start.ruser,
                tty=start.tty,
            )
            self.site = Site(start.service, start.rhost)
            outcome = await self._login(start)
        except (ProtocolError, TimeoutError) as exc:
            # Answer FAILURE before closing: a module with fail=open treats a silent drop
            # before the daemon's first frame as "daemon down", and a bad START (an odd user
            # name) must never turn into PAM_IGNORE.
            reason = str(exc) if isinstance(exc, ProtocolError) else "no START frame in time"
            await self.trail.record_quietly(
                Event.PROTOCOL_ERROR, outcome=Recorded.ERROR, reason=reason
            )
            outcome = Outcome.FAILURE
        except PromptTimeout:
            await self._finish(Recorded.FAILURE, Reason.TIMEOUT)
            await self.conv.error(MSG_TIMEOUT)
            outcome = Outcome.FAILURE
        except (PeerGone, ConnectionError):  # the module went away (EOF or a reset)
            await self.trail.record_quietly(
                Event.LOGIN, outcome=Recorded.FAILURE, reason=Reason.ABORTED
            )
            return
        except StaleAccount as exc:
            log.error("login_stale_account", error=str(exc), **self.fields)
            await self.trail.record_quietly(
                Event.LOGIN, outcome=Recorded.FAILURE, reason=Reason.STALE_ACCOUNT, message=str(exc)
            )
            await self.conv.error(MSG_STALE)
            outcome = Outcome.FAILURE
        except MfaError as exc:  # store, audit, or an account changed under our feet
            log.error("login_unavailable", error=str(exc), **self.fields)
            self.ctx.metrics.failed(exc)
            await self.trail.record_quietly(
                Event.LOGIN, outcome=Recorded.ERROR, reason=Reason.UNAVAILABLE
            )
            await self.conv.error(MSG_UNAVAILABLE)
            outcome = Outcome.UNAVAILABLE
        except Exception:  # a bug: fail closed, loudly; never a silent close (fail=open)
            log.exception("login_internal_error", **self.fields)
            await self.trail.record_quietly(
                Event.LOGIN, outcome=Recorded.ERROR, reason=Reason.INTERNAL_ERROR
            )
            await self.conv.error(MSG_UNAVAILABLE)
            outcome = Outcome.UNAVAILABLE
        await self.conv.result(outcome)

    async def _login(self, start: Start) -> Outcome:
        ctx, config, now = self.ctx, self.config, self.ctx.clock()
        ident = await identity.resolve(start.user)
        user = start.user
        account: Account | None = None
        if ident is not None:
            user = ident.name
            self.fields.update(user=ident.name, uid=ident.uid)
            if ident.name != start.user:
                self.fields["typed_user"] = start.user
            account = await identity.account_of(ctx, ident)
        elif await identity.has_rows(ctx.store, start.user):
            # NSS does not know a name mfad has an account for: NSS is down or cannot be
            # reached from here, or the user was deleted. Never a skip: fail closed.
            log.error(
                "login_name_unresolved",
                **self.fields,
                reason="NSS does not resolve a name that has an account",
            )
            await self._finish(Recorded.ERROR, Reason.NAME_UNRESOLVED)
            await self.conv.error(MSG_UNAVAILABLE)
            return Outcome.UNAVAILABLE
        if account is not None and policy.exemption_expired(account, now):
            account = await self._end_exemption(account, now)
        groups: frozenset[str] = frozenset()
        if ident is not None and policy.needs_groups(config, account, now):
            groups = await asyncio.to_thread(nss.groups_of, ident.name)
        refusal = await ctx.guard.refusal(user, login_source(start.rhost), now)
        decision = policy.decide(config, start.service, account, groups, refusal, now)
        if decision.action is policy.Action.SKIP:
            await self._finish(Recorded.SKIPPED, decision.reason)
            return Outcome.SKIP
        if decision.action is policy.Action.REFUSE:
            assert decision.refusal is not None and decision.then is not None
            if not config.lockout.silent:
                await self._finish(Recorded.FAILURE, decision.refusal.reason)
                await self.conv.error(_refusal_message(decision.refusal))
                return Outcome.FAILURE
            decision = decision.then  # silent: as usual, and the verifier accepts nothing
        if decision.action is policy.Action.ENROL and ident is not None:
            return await self._must_enrol(
                ident, account, decision.reason, decoy=refusal is not None
            )
        # ENROL for a name NSS does not know: a code, as for anyone, that always fails
        has_token = account is not None and account.sealed_secret is not None
        kind = account.params.kind if account is not None and has_token else Kind.TOTP
        await self.trail.record(Event.CHALLENGE, outcome=Recorded.PENDING, method=str(kind))
        return await self._ask_for_code(user, account if has_token else None)

    async def _end_exemption(self, account: Account, now: float) -> Account | None:
        """An exemption past its expiry ends here, for good: back to the kept token, or none."""
        change = StateChange(State.ACTIVE if account.sealed_secret is not None else State.DISABLED)
        await self.trail.record(
            Event.STATE_CHANGED,
            outcome=Recorded.SUCCESS,
            state=change.state,
            reason=Reason.EXEMPTION_EXPIRED,
        )
        await self.ctx.store.set_state(account.user, change, now)
        return await self.ctx.store.get_account(account.user)

    # --- code prompt ---

    async def _ask_for_code(self, user: str, account: Account | None) -> Outcome:
        subject = Subject(user, login_source(self.site.rhost), self.site, account)
        attempts = self.config.login.max_attempts
        for attempt in range(1, attempts + 1):
            answer = await self.conv.ask(self.config.login.prompt)
            verdict = await self.verifier.check(
                subject, answer, Purpose.LOGIN, attempt=attempt, **self._context()
            )
            if verdict.ok:
                if verdict.remaining is not None and verdict.remaining <= recovery.WARN_AT:
                    await self._warn_low_codes(verdict.remaining)
                await self._finish(
                    Recorded.SUCCESS, Reason.CORRECT_CODE, method=verdict.method, attempts=attempt
                )
                return Outcome.SUCCESS
            if verdict.refusal is not None and not self.config.lockout.silent:
                await self._finish(Recorded.FAILURE, verdict.refusal.reason, attempts=attempt)
                await self.conv.error(_refusal_message(verdict.refusal))
                return Outcome.FAILURE
            if attempt < attempts:
                replayed = verdict.reason == Reason.REPLAYED_CODE
                await self.conv.error(MSG_REPLAYED if replayed else MSG_INCORRECT)
        await self._finish(Recorded.FAILURE, Reason.TOO_MANY_ATTEMPTS, attempts=attempts)
        await self.conv.error(MSG_TOO_MANY)
        return Outcome.MAXTRIES

    async def _warn_low_codes(self, left: int) -> None:
        await self.conv.info(
            f"Only {left} recovery code{'s' if left != 1 else ''} left. "
            "Make new ones with `mfa recovery-codes --regenerate`."
        )
        await self.conv.acknowledge(MSG_CONTINUE)

    def _context(self) -> dict[str, Any]:
        """The session's fields for the verifier's records, less the user it sets itself."""
        return {k: v for k, v in self.fields.items() if k != "user"}

    # --- enrolment at login ---

    async def _must_enrol(
        self, ident: Identity, account: Account | None, reason: str, *, decoy: bool
    ) -> Outcome:
        """A user who must enrol: offer it now, or refuse with what to do. `decoy`: locked
        under `lockout.silent`; a key that is never stored, and nothing will be accepted."""
        ctx, config, now = self.ctx, self.config, self.ctx.clock()
        pending = account is not None and account.state is State.PENDING
        deadline = account.deadline if account is not None and pending else None
        if not pending:
            grace = config.enrolment.grace_days * 86400
            deadline = now + grace if grace > 0 else None
            await self.trail.record(
                Event.STATE_CHANGED,
                outcome=Recorded.SUCCESS,
                state=State.PENDING,
                reason=reason,
                deadline=iso(deadline) if deadline else None,
            )
            await ctx.store.set_state(
                ident.name, StateChange(State.PENDING, deadline, uid=ident.uid), now
            )
        if deadline is not None and deadline <= now:
            await self._finish(Recorded.FAILURE, Reason.ENROLMENT_EXPIRED)
            await self.conv.error(MSG_ENROLMENT_EXPIRED)
            return Outcome.FAILURE
        if not config.enrolment.at_login:
            await self._finish(Recorded.FAILURE, Reason.NOT_ENROLLED)
            await self.conv.error(MSG_NOT_ENROLLED)
            return Outcome.FAILURE
        return await self._enrol(ident, decoy=decoy)

    async def _enrol(self, ident: Identity, *, decoy: bool) -> Outcome:
        await self.trail.record(Event.ENROLMENT_STARTED, outcome=Recorded.PENDING, method="login")
        if decoy:
            offer = enrolment.decoy(self.ctx, ident)
        else:
            origin = f"login:{login_source(self.site.rhost)}"
            offer = await enrolment.begin(self.ctx, ident, origin, reoffer=True)
        await self.conv.info(
            "\n".join(
                [
                    MSG_ENROL_INTRO,
                    render_qr(offer.uri),
                    offer.uri,
                    f"Key: {enrolment.key_groups(offer.secret)}",
                ]
            )
        )
        attempts = self.config.login.max_attempts
        source = login_source(self.site.rhost)
        for attempt in range(1, attempts + 1):
            answer = await self.conv.ask(self.config.login.prompt)
            verdict, confirmed = await enrolment.confirm(
                self.ctx,
                ident,
                answer,
                source,
                self.site,
                must_exist=False,
                attempt=attempt,
                **self._context(),
            )
            if confirmed is not None:
                await self.trail.record(
                    Event.ENROLMENT_CONFIRMED, outcome=Recorded.SUCCESS, method="login"
                )
                await enrolment.activate(self.ctx, confirmed)
                await self.conv.info("\n".join([MSG_CODES, *(f"  {c}" for c in confirmed.codes)]))
                await self.conv.acknowledge(MSG_ACKNOWLEDGE)
                await self._finish(
                    Recorded.SUCCESS, Reason.ENROLLED, method="enrolment", attempts=attempt
                )
                return Outcome.SUCCESS
            if verdict.refusal is not None and not self.config.lockout.silent:
                await self._finish(
                    Recorded.FAILURE, verdict.refusal.reason, method="enrolment", attempts=attempt
                )
                await self.conv.error(_refusal_message(verdict.refusal))
                return Outcome.FAILURE
            if attempt < attempts:
                await self.conv.error(MSG_INCORRECT)
        await self._finish(
            Recorded.FAILURE, Reason.TOO_MANY_ATTEMPTS, method="enrolment", attempts=attempts
        )
        await self.conv.error(MSG_TOO_MANY)
        return Outcome.MAXTRIES

    async def _finish(self, outcome: Recorded, reason: str, **extra: Any) -> None:
        """The login's one `login` record: the canonical line, with the duration."""
        duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        await self.trail.record(
            Event.LOGIN, outcome=outcome, reason=reason, duration_ms=duration_ms, **extra
        )

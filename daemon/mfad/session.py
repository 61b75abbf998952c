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

On the user PAM socket (`own_uid`: a program that runs as the user, such as a
screen locker) the name must be the peer's own account; its guesses count
from the source ``uid:N``, the same as its codes given over the control
socket, so a claimed rhost cannot dodge a source block; and enrolment is not
offered there.

What the user must read comes as ERROR, which the module shows even under
PAM_SILENT (sudo); under it (START ``silent=1``) nothing the user needs is sent
as INFO: a user who must enrol is told to run `mfa enroll`, not shown a QR
code they would not see. sshd shows text only in front of a prompt (after the
last one it becomes an instruction `ssh -q` hides, or a banner), so under sshd
(PAM_TTY "ssh") a refusal's message rides on one more prompt (`_refuse`).

Records written per login: ``challenge`` when a code is asked for (with the
method), ``email_code`` for each code mailed or not (the email method; a lost
device's recovery code, lost_device.email_recovery), the verifier's
``attempt`` records for each answer not accepted, enrolment and
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
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from mfa_wire.events import Event, Reason
from mfa_wire.events import Outcome as Recorded
from mfa_wire.frametypes import Outcome
from mfad import emailcodes, enrolment, identity, nss, policy, recovery
from mfad.context import Context
from mfad.conversation import Conversation, PeerGone, PromptTimeout
from mfad.errors import MailError, MfaError, ProtocolError, StaleAccount
from mfad.identity import Identity
from mfad.lockout import Refusal, control_source, login_source
from mfad.model import Account, CodePurpose, Kind, Site, State, StateChange
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
MSG_ENROL_FIRST = (
    "Multi-factor authentication is required for this account, but it is not set up. "
    "Run `mfa enroll` in a terminal to set it up, then try again."
)
MSG_NOT_OWN = "Only your own account's second factor can be checked here."
MSG_EMAIL_SENT = "A code was sent to {address}."
MSG_EMAIL_STANDS = "A code was sent to {address} moments ago: enter that one."
MSG_EMAIL_DOWN = (
    "The verification code could not be sent by email right now. Try again later, "
    "or contact your administrator."
)
RECOVERY_KEYWORD = "email"  # typed at the code prompt: a lost device (lost_device.email_recovery)
MSG_RECOVERY_HINT = (
    "Lost your authenticator? Type `email` at the prompt for a one-time recovery code by email."
)
MSG_RECOVERY_SENT = (
    "A one-time recovery code was sent to {address}. Enter it at the prompt; your account "
    "is then suspended until you set up a new authenticator with `mfa enroll`."
)
MSG_RECOVERY_NO_ADDRESS = "There is no confirmed email address to send a recovery code to."
MSG_SUSPENDED_AFTER_RECOVERY = (
    "You are logged in with a recovery code. Set up a new authenticator now with `mfa enroll`."
)
MSG_EMAIL_OFF = (
    "This account gets its codes by email, which is not available. Contact your administrator."
)
# sshd sets PAM_TTY to "ssh" for its PAM conversation (OpenSSH's PAM_TTY_KLUDGE, on Linux)
SSHD_TTY = "ssh"
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
        self,
        ctx: Context,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        own_uid: int | None = None,
    ) -> None:
        """`own_uid`: the peer's uid on the user PAM socket (None on the root one)."""
        self.ctx = ctx
        self.config = ctx.config  # one config for the whole conversation, even across a reload
        self.conv = Conversation(reader, writer, self.config.login.prompt_timeout)
        self.fields: dict[str, Any] = {"session": _next_session_id(), "peer": peer}
        self.trail = ctx.audit.bind(self.fields)  # every record of this login carries them
        self.started = time.monotonic()
        self.verifier = Verifier(ctx)
        self.site = Site("", "")
        self.own_uid = own_uid
        self.source = login_source("")  # the guard's source key, set from START
        self.silent = False

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
            self.silent = start.silent
            self.source = (
                login_source(start.rhost) if self.own_uid is None else control_source(self.own_uid)
            )
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
        if self.own_uid is not None and (ident is None or ident.uid != self.own_uid):
            # a user's own program asks about someone else (or a name NSS does not know)
            log.warning("login_not_own_account", **self.fields)
            await self._finish(Recorded.REFUSED, Reason.NOT_OWN_ACCOUNT)
            await self.conv.error(MSG_NOT_OWN)
            return Outcome.FAILURE
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
        refusal = await ctx.guard.refusal(user, self.source, now)
        decision = policy.decide(config, start.service, account, groups, refusal, now)
        if decision.action is policy.Action.SKIP:
            await self._finish(Recorded.SKIPPED, decision.reason)
            return Outcome.SKIP
        if decision.action is policy.Action.REFUSE:
            assert decision.refusal is not None and decision.then is not None
            if not config.lockout.silent:
                await self._finish(Recorded.FAILURE, decision.refusal.reason)
                return await self._refuse(_refusal_message(decision.refusal), Outcome.FAILURE)
            decision = decision.then  # silent: as usual, and the verifier accepts nothing
        if decision.action is policy.Action.ENROL and ident is not None:
            return await self._must_enrol(
                ident, account, decision.reason, decoy=refusal is not None
            )
        # ENROL for a name NSS does not know: a code, as for anyone, that always fails
        has_factor = account is not None and account.has_factor
        kind = account.params.kind if account is not None and has_factor else Kind.TOTP
        # the method asked for; the `login` record names the one that succeeded (a failure
        # names none: metrics count failures by method "none"), `email_code` the mail
        await self.trail.record(Event.CHALLENGE, outcome=Recorded.PENDING, method=str(kind))
        if kind is Kind.EMAIL:
            assert account is not None
            return await self._email_login(account)
        return await self._ask_for_code(user, account if has_factor else None)

    async def _end_exemption(self, account: Account, now: float) -> Account | None:
        """An exemption past its expiry ends here, for good: back to the kept token, or none."""
        change = StateChange(State.ACTIVE if account.has_factor else State.DISABLED)
        await self.trail.record(
            Event.STATE_CHANGED,
            outcome=Recorded.SUCCESS,
            state=change.state,
            reason=Reason.EXEMPTION_EXPIRED,
        )
        await self.ctx.store.set_state(account.user, change, now)
        return await self.ctx.store.get_account(account.user)

    # --- code prompt ---

    async def _email_login(self, account: Account) -> Outcome:
        """The email method: mail a code to the confirmed address (or keep the one mailed
        moments ago: emailcodes' resend interval), say where, masked, then ask for it.
        No way to mail it: the login fails closed, recorded, with a message."""
        user = account.user
        address = await self.ctx.store.get_address(user)
        if not self.config.email.enabled or address is None or not address.confirmed:
            await self._finish(Recorded.FAILURE, Reason.NO_ADDRESS)
            return await self._refuse(MSG_EMAIL_OFF, Outcome.FAILURE)
        shown = emailcodes.mask(address.address)
        sent = await self._mail_code(user, address.address, CodePurpose.LOGIN)
        if sent is None:
            await self._finish(Recorded.ERROR, Reason.EMAIL_UNAVAILABLE)
            return await self._refuse(MSG_EMAIL_DOWN, Outcome.FAILURE)
        await self.conv.info((MSG_EMAIL_SENT if sent else MSG_EMAIL_STANDS).format(address=shown))
        return await self._ask_for_code(user, account, mailed=CodePurpose.LOGIN)

    async def _mail_code(self, user: str, address: str, purpose: CodePurpose) -> bool | None:
        """Mail a code for `purpose` and record it (``email_code``): True if sent, False
        if one mailed moments ago stands (emailcodes' resend interval), None if the mail
        server did not take it (recorded with the mailer's reason; nothing blocks)."""
        try:
            sent = await emailcodes.send(self.ctx, user, address, purpose)
        except MailError as exc:
            log.error("email_code_unsent", error=str(exc), **self.fields)
            await self.trail.record(
                Event.EMAIL_CODE,
                outcome=Recorded.ERROR,
                purpose=str(purpose),
                reason=Reason.EMAIL_UNAVAILABLE,
                message=str(exc),
            )
            return None
        await self.trail.record(
            Event.EMAIL_CODE,
            outcome=Recorded.SUCCESS if sent else Recorded.REFUSED,
            purpose=str(purpose),
            address=emailcodes.mask(address),
            reason=None if sent else Reason.RESEND_TOO_SOON,
        )
        return sent

    async def _ask_for_code(
        self, user: str, account: Account | None, mailed: CodePurpose | None = None
    ) -> Outcome:
        subject = Subject(user, self.source, self.site, account, mailed=mailed)
        offer = self._offers_recovery(mailed)
        if offer:
            await self.conv.info(MSG_RECOVERY_HINT)
        attempts = self.config.login.max_attempts
        for attempt in range(1, attempts + 1):
            answer = await self.conv.ask(self.config.login.prompt)
            if offer and answer.strip().lower() == RECOVERY_KEYWORD:
                offer = False  # once per login; the request is no attempt at a code
                subject = await self._mail_recovery_code(subject)
                answer = await self.conv.ask(self.config.login.prompt)
            verdict = await self.verifier.check(
                subject, answer, Purpose.LOGIN, attempt=attempt, **self._context()
            )
            if verdict.ok:
                if verdict.method == emailcodes.METHODS[CodePurpose.RECOVERY]:
                    await self._suspend_after_recovery(user)
                if verdict.remaining is not None and verdict.remaining <= recovery.WARN_AT:
                    await self._warn_low_codes(verdict.remaining)
                await self._finish(
                    Recorded.SUCCESS, Reason.CORRECT_CODE, method=verdict.method, attempts=attempt
                )
                return Outcome.SUCCESS
            if verdict.refusal is not None and not self.config.lockout.silent:
                await self._finish(Recorded.FAILURE, verdict.refusal.reason, attempts=attempt)
                return await self._refuse(_refusal_message(verdict.refusal), Outcome.FAILURE)
            if attempt < attempts:
                replayed = verdict.reason == Reason.REPLAYED_CODE
                await self.conv.error(MSG_REPLAYED if replayed else MSG_INCORRECT)
        await self._finish(Recorded.FAILURE, Reason.TOO_MANY_ATTEMPTS, attempts=attempts)
        return await self._refuse(MSG_TOO_MANY, Outcome.MAXTRIES)

    # --- a lost device: a recovery code by email (lost_device.email_recovery) ---

    def _offers_recovery(self, mailed: CodePurpose | None) -> bool:
        """Whether this code prompt offers a recovery code by email: where policy allows,
        to everyone asked for a token's code (unknown names too, so the offer tells
        nothing), not to the email method, and not where INFO is not shown."""
        return self.config.lost_device.email_recovery and mailed is None and not self.silent

    async def _mail_recovery_code(self, subject: Subject) -> Subject:
        """Mail a one-time recovery code to the user's confirmed address and say so; the
        subject from now on may answer with it. Recorded (``email_code``, purpose
        recovery), which is what tells the administrators (notify)."""
        purpose = CodePurpose.RECOVERY
        address = None
        if subject.account is not None and subject.account.has_factor:
            address = await self.ctx.store.get_address(subject.user)
        if address is None or not address.confirmed:
            await self.trail.record(
                Event.EMAIL_CODE,
                outcome=Recorded.REFUSED,
                purpose=str(purpose),
                reason=Reason.NO_ADDRESS,
            )
            await self.conv.error(MSG_RECOVERY_NO_ADDRESS)
            return subject
        shown = emailcodes.mask(address.address)
        sent = await self._mail_code(subject.user, address.address, purpose)
        if sent is None:
            await self.conv.error(MSG_EMAIL_DOWN)
            return subject
        await self.conv.info(
            MSG_RECOVERY_SENT.format(address=shown)
            if sent
            else MSG_EMAIL_STANDS.format(address=shown)
        )
        return replace(subject, mailed=purpose)

    async def _suspend_after_recovery(self, user: str) -> None:
        """A recovery code by email lets the user in once: the account is suspended (the
        token kept, no second factor asked) until they enrol anew (lost_device.self_enrol)
        or an administrator resumes it. Recorded first, which tells the administrators."""
        await self.trail.record(
            Event.STATE_CHANGED,
            outcome=Recorded.SUCCESS,
            state=State.SUSPENDED,
            reason=emailcodes.METHODS[CodePurpose.RECOVERY],
        )
        await self.ctx.store.set_state(user, StateChange(State.SUSPENDED), self.ctx.clock())
        if not self.silent:
            await self.conv.info(MSG_SUSPENDED_AFTER_RECOVERY)
            await self.conv.acknowledge(MSG_CONTINUE)

    async def _warn_low_codes(self, left: int) -> None:
        if self.silent:  # information, which PAM_SILENT turns off; `mfa status` tells it too
            return
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
            return await self._refuse(MSG_ENROLMENT_EXPIRED, Outcome.FAILURE)
        if not config.enrolment.at_login:
            await self._finish(Recorded.FAILURE, Reason.NOT_ENROLLED)
            return await self._refuse(MSG_NOT_ENROLLED, Outcome.FAILURE)
        if self.silent or self.own_uid is not None:
            # The QR code and key would be INFO the module does not show (PAM_SILENT), or
            # a user's own program (a screen locker) is no place to set up a token.
            why = "silent" if self.silent else "user_socket"
            await self._finish(Recorded.FAILURE, Reason.NOT_ENROLLED, enrolment_not_offered=why)
            return await self._refuse(MSG_ENROL_FIRST, Outcome.FAILURE)
        return await self._enrol(ident, decoy=decoy)

    async def _enrol(self, ident: Identity, *, decoy: bool) -> Outcome:
        await self.trail.record(Event.ENROLMENT_STARTED, outcome=Recorded.PENDING, method="login")
        if decoy:
            offer = enrolment.decoy(self.ctx, ident)
        else:
            origin = f"login:{self.source}"
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
        for attempt in range(1, attempts + 1):
            answer = await self.conv.ask(self.config.login.prompt)
            verdict, confirmed = await enrolment.confirm(
                self.ctx,
                ident,
                answer,
                self.source,
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
                return await self._refuse(_refusal_message(verdict.refusal), Outcome.FAILURE)
            if attempt < attempts:
                await self.conv.error(MSG_INCORRECT)
        await self._finish(
            Recorded.FAILURE, Reason.TOO_MANY_ATTEMPTS, method="enrolment", attempts=attempts
        )
        return await self._refuse(MSG_TOO_MANY, Outcome.MAXTRIES)

    async def _refuse(self, message: str, outcome: Outcome) -> Outcome:
        """Tell the user why the login ends; returns `outcome`.

        For sshd the message rides on one more prompt: sshd turns text that follows
        the last prompt into the instruction of a prompt-less request, which `ssh -q`
        does not print (OpenSSH 9.2, auth-pam.c sshpam_query and the client's logit).
        """
        await self.conv.error(message)
        if self.fields.get("tty") == SSHD_TTY:
            await self.conv.acknowledge(MSG_CONTINUE)
        return outcome

    async def _finish(self, outcome: Recorded, reason: str, **extra: Any) -> None:
        """The login's one `login` record: the canonical line, with the duration."""
        duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        await self.trail.record(
            Event.LOGIN, outcome=outcome, reason=reason, duration_ms=duration_ms, **extra
        )

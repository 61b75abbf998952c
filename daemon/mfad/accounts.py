"""Control operations on accounts: status, show, list, enrolment, recovery codes, lifecycle.

Called by control.py; each handler takes the caller and the request object
and returns the response fields. Refusals are RequestErrors, which control.py
turns into responses and audits.

Self-service (any user on their own account): status, show, enroll_begin,
enroll_confirm, recovery_codes (regenerating needs a current code). The
account named is resolved through NSS (identity.py) and is the caller's when
its uid is the caller's uid: ``Alice`` names alice's account if NSS says so,
and never another's. Administrators only (control.py checks): list, unlock,
forget and the lifecycle actions.

Codes given here go through the one verifier under the guard, from a source of
their own per calling uid: the control socket is no way around the lockout.
Every change is recorded before it is made (``_audited``): if the record
cannot be written nothing changes, and if the store then fails a second record
says so; the client is told the truth either way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog

from mfa_wire.control import json_chunks
from mfa_wire.events import Event, Outcome
from mfad import emailcodes, enrolment, identity, lifecycle, nss, recovery, times, totp
from mfad.context import Context
from mfad.errors import (
    AlreadyEnrolled,
    AuditError,
    Forbidden,
    Locked,
    NoSuchUser,
    NotEnrolled,
    RequestError,
    StaleAccount,
    StoreError,
    WrongCode,
)
from mfad.identity import Identity
from mfad.lockout import Refusal, control_source
from mfad.model import (
    Account,
    Address,
    Counter,
    Kind,
    Site,
    SourceBlock,
    State,
    TokenParams,
    state_of,
)
from mfad.store import ACCOUNT_SOURCE
from mfad.times import iso
from mfad.verify import Purpose, Subject, Verdict, Verifier

log = structlog.get_logger("mfad.accounts")
R = TypeVar("R")
SITE = Site("mfa", "")  # where a code given to `mfa` comes from, for the guard's records
Handler = Callable[
    ["Caller", dict[str, Any]],
    Awaitable[dict[str, Any] | AsyncGenerator[dict[str, Any], None]],
]
MAX_REASON = 500
HISTORY_LIMIT = 20
LIST_COLUMNS = (
    "user",
    "state",
    "method",
    "address",
    "enrolled_at",
    "last_verified_at",
    "last_rhost",
    "failed_attempts",
    "locked_until",
    "exempt_reason",
    "exempt_until",
    "enrol_by",
    "source_blocks",
)


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    name: str
    is_admin: bool


def user_field(request: dict[str, Any]) -> str:
    user = request.get("user")
    if not identity.valid_user_name(user):
        raise RequestError("the request needs a user name (printable, no '/' or ':')")
    assert isinstance(user, str)
    return user


def _locked(refusal: Refusal) -> Locked:
    until = iso(refusal.until) or "an administrator unlocks it"
    what = (
        "the account is locked"
        if refusal.reason == "locked"
        else ("codes from `mfa` are blocked for this account")
    )
    return Locked(f"{what} after too many wrong codes, until {until}; no code was checked")


def _refused(verdict: Verdict, wrong: str) -> RequestError:
    return _locked(verdict.refusal) if verdict.refusal is not None else WrongCode(wrong)


def _locked_until(counter: Counter, now: float) -> str | None:
    locked = counter.until if counter.until > now else None
    return "until unlocked" if locked is not None and math.isinf(locked) else iso(locked)


def _blocks(blocks: Sequence[SourceBlock]) -> list[dict[str, Any]]:
    """The per-source blocks in force, as the rows carry them: the guard's source key
    (`host:RHOST`, `local`, `uid:N`) and until when."""
    return [{"source": b.source, "until": iso(b.until)} for b in blocks]


def _address_fields(address: Address | None) -> dict[str, Any]:
    """The address as rows show it: masked (whoever reads a list needs no more), and
    whether it is confirmed."""
    if address is None:
        return {"address": None, "address_confirmed": None}
    return {"address": emailcodes.mask(address.address), "address_confirmed": address.confirmed}


def _row(
    account: Account,
    counter: Counter,
    blocks: Sequence[SourceBlock],
    now: float,
    address: Address | None = None,
) -> dict[str, Any]:
    token = account.sealed_secret is not None
    hotp_token = token and account.params.kind is Kind.HOTP
    return {
        "uid": account.uid,
        "user": account.user,
        "state": account.state,
        "method": str(account.params.kind) if account.has_factor else None,
        **_address_fields(address),
        "algorithm": account.params.algorithm if token else None,
        "digits": account.params.digits if token else None,
        "period": account.params.period if token and not hotp_token else None,
        # the last counter used: what `mfa resync` moves; a time step is no news to anyone
        "hotp_counter": account.last_step if hotp_token else None,
        "enrolled_at": iso(account.enrolled_at),
        "last_verified_at": iso(account.last_verified_at),
        "last_rhost": account.last_rhost,
        "failed_attempts": counter.failures,
        "failures_since_success": counter.total,
        "locked_until": _locked_until(counter, now),
        "exempt_reason": account.exempt_reason,
        "exempt_until": iso(account.exempt_until),
        "enrol_by": iso(account.deadline) if account.state is State.PENDING else None,
        "clock_offset_steps": account.clock_offset,
        "source_blocks": _blocks(blocks),
    }


class AccountOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.verifier = Verifier(ctx)
        self.self_service: dict[str, Handler] = {
            "status": self.status,
            "show": self.show,
            "enroll_begin": self.enroll_begin,
            "enroll_confirm": self.enroll_confirm,
            "recovery_codes": self.recovery_codes,
        }
        self.admin: dict[str, Handler] = {
            "list": self.list,
            "unlock": self.unlock,
            "forget": self.forget,
            **{action: self._lifecycle(action) for action in lifecycle.ACTIONS},
        }
        # a user may turn their own MFA off where policy allows (lost_device.self_disable)
        self.self_service["disable"] = self._disable
        del self.admin["disable"]

    async def target(self, caller: Caller, request: dict[str, Any]) -> Identity:
        """The account a self-service request names, if the caller may act on it.

        Decided by uid, never by spelling. A user naming anyone else (or nobody NSS
        knows) is refused the same way, so the answer does not tell which names exist.
        """
        typed = user_field(request)
        ident = await identity.resolve(typed)
        if caller.is_admin:
            if ident is None:
                raise NoSuchUser(f"there is no user {typed!r} on this system")
            return ident
        if ident is None or ident.uid != caller.uid:
            raise Forbidden(f"{caller.name} may only act on their own account, not {typed!r}")
        return ident

    async def _audit(
        self,
        caller: Caller,
        op: str,
        target: str,
        outcome: Outcome = Outcome.SUCCESS,
        **extra: Any,
    ) -> None:
        """One record per target of an administrative action, with the actor."""
        await self.ctx.audit.record(
            Event.CONTROL,
            outcome=outcome,
            op=op,
            actor_uid=caller.uid,
            actor=caller.name,
            user=target,
            **extra,
        )

    async def _audited(
        self,
        caller: Caller,
        op: str,
        target: str,
        change: Callable[[], Awaitable[R]],
        **extra: Any,
    ) -> R:
        """Record the change, then make it: never a change in force without its record.

        AuditError: nothing changed. StoreError after the record: a second record says
        the change failed (as far as the disk allows) and the client hears "unavailable".
        """
        await self._audit(caller, op, target, **extra)
        try:
            return await change()
        except StoreError as exc:
            try:
                await self._audit(
                    caller,
                    op,
                    target,
                    outcome=Outcome.ERROR,
                    reason="store_failed: the change above was not made",
                )
            except AuditError as err:
                log.error("audit_unwritable", error=str(err), op=op, user=target)
            raise exc

    async def _account_row(self, ident: Identity) -> dict[str, Any]:
        try:
            account = await identity.account_of(self.ctx, ident)
            stale = None
        except StaleAccount as exc:
            account, stale = await self.ctx.store.get_account(ident.name), str(exc)
        now = self.ctx.clock()
        blocks = await self.ctx.store.source_blocks(now, ident.name)
        address = await self.ctx.store.get_address(ident.name)
        if account is None:
            row = {
                "user": ident.name,
                "uid": ident.uid,
                "state": State.NONE,
                "method": None,
                **_address_fields(address),
                "enrolled_at": None,
                "last_verified_at": None,
                "last_rhost": None,
                "failed_attempts": 0,
                "failures_since_success": 0,
                "locked_until": None,
                "clock_offset_steps": 0,
                "source_blocks": _blocks(blocks),
            }
            return row if stale is None else {**row, "stale": stale}
        guard = await self.ctx.store.get_guard(ident.name, ACCOUNT_SOURCE)
        row = _row(account, guard.account, blocks, now, address)
        if stale is not None:
            row["stale"] = stale
        return row

    async def status(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self.target(caller, request)
        row = await self._account_row(ident)
        pending = await identity.pending_of(self.ctx.store, ident, self.ctx.clock())
        row["enrolment_pending"] = pending is not None
        row["recovery_codes_left"] = await self.ctx.store.recovery_codes_left(ident.name)
        return row

    async def show(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        row = await self.status(caller, request)
        logins = await self.ctx.store.history(row["user"], HISTORY_LIMIT)
        row["history"] = [
            {"time": iso(x.at), "service": x.service, "rhost": x.rhost, "method": x.method}
            for x in logins
        ]
        return row

    async def list(
        self, caller: Caller, request: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Known accounts, filtered by state and group, sorted by any column (empty last).

        Sent in as many frames as the rows need: a fleet has more accounts than one
        64 KiB frame holds. An account whose name NSS now gives to another uid, or to
        nobody, is marked stale (`mfa forget` removes it).
        """
        state, group = request.get("state"), request.get("group")
        sort = request.get("sort") or "user"
        if sort not in LIST_COLUMNS:
            raise RequestError(f"cannot sort by {sort!r}; choose one of {', '.join(LIST_COLUMNS)}")
        now = self.ctx.clock()
        found = await self.ctx.store.accounts()
        blocked: dict[str, list[SourceBlock]] = {}
        for block in await self.ctx.store.source_blocks(now):
            blocked.setdefault(block.user, []).append(block)
        uids = await identity.current_uids([a.user for a, _ in found])
        addresses = await self.ctx.store.addresses()
        rows = []
        for account, counter in found:
            row = _row(
                account, counter, blocked.get(account.user, []), now, addresses.get(account.user)
            )
            current = uids.get(account.user)
            if current is None or account.uid not in (None, current):
                row["stale"] = identity.stale_message(account.user, account.uid, current)
            rows.append(row)
        if state:
            rows = [r for r in rows if r["state"] == state]
        if group:
            if not isinstance(group, str):
                raise RequestError("`group` must be a group name")
            members = set(await lifecycle.group_members(group))
            rows = [r for r in rows if r["user"] in members]
        # unset values last; source blocks by how many there are
        present = [r for r in rows if r[sort] not in (None, [])]
        present.sort(
            key=lambda r: len(r[sort]) if isinstance(r[sort], list) else r[sort],
            reverse=bool(request.get("descending")),
        )
        rows = present + [r for r in rows if r[sort] in (None, [])]
        return _frames(rows)

    async def enroll_begin(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self.target(caller, request)
        user = ident.name
        account = await identity.account_of(self.ctx, ident)
        state = state_of(account)
        if state is State.ACTIVE:
            todo = (
                f"`mfa reset {user}` first"
                if caller.is_admin
                else "ask an administrator to reset it"
            )
            raise AlreadyEnrolled(f"{user} is already enrolled; to replace the token, {todo}")
        if state in (State.SUSPENDED, State.EXEMPT) and not enrolment.reenrols(self.ctx, state):
            raise lifecycle.TransitionRefused(
                f"{user} is {state}; an administrator must resume or unexempt it first"
            )
        deadline = account.deadline if account is not None and state is State.PENDING else None
        if not caller.is_admin and deadline is not None and deadline <= self.ctx.clock():
            raise lifecycle.TransitionRefused(
                f"the time to enrol {user} has passed; an administrator must `mfa reset {user}`"
            )
        params = _params(self.ctx, request)
        origin = f"control:{control_source(caller.uid)}"
        offer = await self._audited(
            caller,
            "enroll_begin",
            user,
            lambda: enrolment.begin(self.ctx, ident, origin, params),
        )
        return {
            "user": user,
            "secret": offer.secret,
            "uri": offer.uri,
            "algorithm": offer.params.algorithm,
            "digits": offer.params.digits,
            "period": offer.params.period,
        }

    async def enroll_confirm(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self.target(caller, request)
        answer = request.get("code")
        if not isinstance(answer, str):
            raise RequestError("the request needs a code")
        before = state_of(await identity.account_of(self.ctx, ident))
        verdict, confirmed = await enrolment.confirm(
            self.ctx,
            ident,
            answer,
            control_source(caller.uid),
            SITE,
            op="enroll_confirm",
            actor_uid=caller.uid,
            actor=caller.name,
        )
        if confirmed is None:
            raise _refused(
                verdict,
                "that code is not right for the new key; check the phone's "
                "clock and try the code that is showing now",
            )
        await self._audited(
            caller,
            "enroll_confirm",
            ident.name,
            lambda: enrolment.activate(self.ctx, confirmed),
            state="active",
            before=before,
        )
        # The confirming code's step is used (replay protection): a login needs a later code.
        period = confirmed.pending.params.period
        return {
            "user": ident.name,
            "state": "active",
            "recovery_codes": confirmed.codes,
            "next_code_at": iso((confirmed.step + 1) * period),
        }

    async def recovery_codes(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """How many are left; with `regenerate`, a new set (a user must give a current code)."""
        ident = await self.target(caller, request)
        user = ident.name
        account = await identity.account_of(self.ctx, ident)
        if account is None or account.state is not State.ACTIVE or account.sealed_secret is None:
            raise NotEnrolled(f"{user} has no active token, so no recovery codes")
        if not request.get("regenerate"):
            return {"user": user, "remaining": await self.ctx.store.recovery_codes_left(user)}
        if not caller.is_admin:
            await self._prove(caller, account, request.get("code"))
        codes = recovery.generate(self.ctx.config.enrolment.recovery_codes)
        digests = [self.ctx.box.digest(user, c) for c in codes]
        await self._audited(
            caller,
            "recovery_codes",
            user,
            lambda: self.ctx.store.replace_recovery_codes(user, digests, self.ctx.clock()),
            regenerated=len(codes),
        )
        return {"user": user, "codes": codes}

    async def _prove(self, caller: Caller, account: Account, answer: Any) -> None:
        """A user acting on their own token shows they hold it: a current, unused code
        (or one of their recovery codes), checked under the guard like a login's."""
        subject = Subject(account.user, control_source(caller.uid), SITE, account)
        verdict = await self.verifier.check(
            subject,
            answer if isinstance(answer, str) else "",
            Purpose.PROOF,
            op="recovery_codes",
            actor_uid=caller.uid,
            actor=caller.name,
        )
        if not verdict.ok:
            raise _refused(verdict, "give a current code from your authenticator app")

    async def unlock(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Clear locks, source blocks and failure counts (pam_faillock --reset), and say which
        were in force. A name NSS does not know is refused (`no_such_user`) unless mfad
        counts wrong codes under it (a user since deleted, or guesses at a made-up name)."""
        unlocked, canonical, cleared, refused = [], {}, {}, []
        now = self.ctx.clock()
        for name in await lifecycle.targets(self.ctx, _with_user(request)):
            ident = await identity.resolve(name)
            user = canonical[name] = ident.name if ident is not None else name
            counter = (await self.ctx.store.get_guard(user, ACCOUNT_SOURCE)).account
            blocks = await self.ctx.store.source_blocks(now, user)
            if ident is None and counter == Counter() and not blocks:
                exc = NoSuchUser(f"there is no user {name!r} on this system")
                refused.append({"user": name, "error": exc.code, "message": str(exc)})
                await self._audit(caller, "unlock", name, outcome=Outcome.REFUSED, message=str(exc))
                continue
            was = {
                "locked_until": _locked_until(counter, now),
                "source_blocks": _blocks(blocks),
                "failed_attempts": counter.failures,
            }
            if not await self._audited(
                caller, "unlock", user, partial(self.ctx.guard.unlock, user)
            ):
                continue
            unlocked.append(user)
            cleared[user] = was
            try:
                await self.ctx.audit.record(
                    Event.LOCK_CLEARED,
                    outcome=Outcome.SUCCESS,
                    user=user,
                    actor=caller.name,
                    actor_uid=caller.uid,
                    reason="unlocked by administrator",
                    **was,
                )
            except AuditError as err:  # the unlock itself is on record already
                log.error("audit_unwritable", error=str(err), op="unlock", user=user)
        return {
            "unlocked": unlocked,
            "canonical": canonical,
            "cleared": cleared,
            "refused": refused,
        }

    async def forget(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Remove the accounts of users who were deleted or re-created with another uid.

        Names are taken as stored (their owner may no longer exist). An account that
        still belongs to its user is refused: `mfa disable` or `mfa reset` that instead.
        """
        if request.get("group") is not None or request.get("all") is not None:
            # during an NSS outage every user would look deleted: name each one
            raise RequestError("`forget` takes user names only, not a group or all")
        forgotten, refused = [], []
        for name in await lifecycle.targets(self.ctx, _with_user(request)):
            account = await self.ctx.store.get_account(name)
            pending = await self.ctx.store.get_pending(name)
            owner = account or pending
            ident = await identity.resolve(name)
            current = ident.uid if ident is not None else None
            if owner is None:
                exc: RequestError = NoSuchUser(f"mfad has no account {name!r}")
            elif ident is not None and ident.name == name and owner.uid in (None, ident.uid):
                exc = lifecycle.TransitionRefused(
                    f"cannot forget {name}: the account belongs to {name} (uid {current}), who "
                    f"still exists; use `mfa disable {name}` or `mfa reset {name}`"
                )
            else:  # deleted, re-created with another uid, or stored under another spelling
                state = account.state if account is not None else State.PENDING
                await self._audited(
                    caller,
                    "forget",
                    name,
                    partial(self.ctx.store.forget, name),
                    forgotten_uid=owner.uid,
                    state=state,
                    current_uid=current,
                )
                forgotten.append({"user": name, "uid": owner.uid, "state": state})
                continue
            refused.append({"user": name, "error": exc.code, "message": str(exc)})
            await self._audit(caller, "forget", name, outcome=Outcome.REFUSED, message=str(exc))
        return {"forgotten": forgotten, "refused": refused}

    async def _disable(
        self, caller: Caller, request: dict[str, Any]
    ) -> dict[str, Any] | AsyncGenerator[dict[str, Any], None]:
        """`disable`: an administrator's, or a user's on their own account only where
        lost_device.self_disable allows under mode optional and no require_groups group
        of theirs would have them enrol again at once."""
        if not caller.is_admin:
            await self._may_disable_self(caller, request)
        return await self._lifecycle("disable")(caller, request)

    async def _may_disable_self(self, caller: Caller, request: dict[str, Any]) -> None:
        cfg = self.ctx.config
        users = request.get("users") or []
        named = [request["user"]] if isinstance(request.get("user"), str) else []
        names = [*named, *(users if isinstance(users, list) else [])]
        if len(names) != 1 or request.get("group") is not None or request.get("all"):
            raise Forbidden("a user may disable only their own account, named alone")
        ident = await self.target(caller, {"user": names[0]})
        if not cfg.lost_device.self_disable or cfg.mode != "optional":
            raise Forbidden(
                "only an administrator may use `mfa disable` here (turning off one's own MFA "
                "needs lost_device.self_disable and mode: optional)"
            )
        groups = await asyncio.to_thread(nss.groups_of, ident.name)
        required = sorted(groups & set(cfg.require_groups))
        if required:
            raise Forbidden(f"{ident.name} is in {', '.join(required)}, which requires MFA")

    def _lifecycle(self, action: str) -> Handler:
        async def run(caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
            reason = request.get("reason")
            if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
                raise RequestError(f"`reason` must be text of at most {MAX_REASON} characters")
            ends = times.from_request(request, "until")
            until = ends.timestamp() if ends is not None else None
            changed, refused = [], []
            for name in await lifecycle.targets(self.ctx, _with_user(request)):
                try:
                    ident = await identity.resolve(name)
                    if ident is None:
                        raise NoSuchUser(f"there is no user {name!r} on this system")
                    planned = await lifecycle.plan(
                        self.ctx, action, ident, reason=reason, until=until
                    )
                except RequestError as exc:
                    refused.append({"user": name, "error": exc.code, "message": str(exc)})
                    await self._audit(
                        caller, action, name, outcome=Outcome.REFUSED, message=str(exc)
                    )
                    continue
                await self._audited(
                    caller,
                    action,
                    planned.user,
                    partial(lifecycle.commit, self.ctx, planned),
                    before=planned.before,
                    after=planned.after,
                    reason=reason,
                    until=iso(until),
                )
                changed.append({"user": planned.user, "from": planned.before, "to": planned.after})
            return {"changed": changed, "refused": refused}

        return run


async def _frames(rows: list[dict[str, Any]]) -> AsyncGenerator[dict[str, Any], None]:
    for chunk in json_chunks(rows):
        yield {"ok": True, "accounts": chunk, "more": True}
    yield {"ok": True, "accounts": [], "more": False, "matched": len(rows)}


def _with_user(request: dict[str, Any]) -> dict[str, Any]:
    """Accept a single `user` wherever a list of `users` is taken."""
    if isinstance(request.get("user"), str):
        return {**request, "users": [request["user"], *(request.get("users") or [])]}
    return request


def _params(ctx: Context, request: dict[str, Any]) -> TokenParams:
    """Token parameters for apps and hardware that need them; the config's by default."""
    base = enrolment.default_params(ctx)
    given = {k: request.get(k) for k in ("algorithm", "digits", "period")}
    params = TokenParams(**{k: getattr(base, k) if v is None else v for k, v in given.items()})
    if (
        not isinstance(params.algorithm, str)
        or params.algorithm not in totp.SECRET_BYTES
        or type(params.digits) is not int
        or params.digits not in (6, 8)
        or type(params.period) is not int
        or params.period not in (30, 60)
    ):
        raise RequestError(
            "token parameters: algorithm SHA1/SHA256/SHA512, digits 6 or 8, period 30 or 60"
        )
    return params

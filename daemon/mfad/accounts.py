"""Control operations on accounts: status, show, list, enrolment, recovery codes, lifecycle.

Called by control.py after it has authorised the caller; each handler takes the
caller and the request object and returns the response fields. Refusals are
RequestErrors, which control.py turns into responses and audits.

Self-service (any user on their own account): status, show, enroll_begin,
enroll_confirm, recovery_codes (regenerating needs a current code).
Administrators only: list, unlock, and the lifecycle actions.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mfad import enrolment, lifecycle, nss, totp
from mfad.context import Context
from mfad.errors import (
    AlreadyEnrolled,
    NoSuchUser,
    NotEnrolled,
    RequestError,
    WrongCode,
)
from mfad.framing import json_chunks
from mfad.store import Account, Counter, TokenParams

Handler = Callable[
    ["Caller", dict[str, Any]],
    Awaitable[dict[str, Any] | AsyncGenerator[dict[str, Any], None]],
]
MAX_REASON = 500
HISTORY_LIMIT = 20
LIST_COLUMNS = (
    "user", "state", "method", "enrolled_at", "last_verified_at", "last_rhost",
    "failed_attempts", "locked_until", "exempt_reason", "exempt_until", "enrol_by",
)


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    name: str
    is_admin: bool


def iso(ts: float | None) -> str | None:
    if ts is None or ts == 0 or math.isinf(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def parse_time(value: Any, field: str) -> float | None:
    """An RFC 3339 time from a request, as a timestamp; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"`{field}` must be an RFC 3339 time")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(f"`{field}` is not an RFC 3339 time: {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def user_field(request: dict[str, Any]) -> str:
    user = request.get("user")
    if not isinstance(user, str) or not user or len(user) > 256 or not user.isprintable():
        raise RequestError("the request needs a user name")
    return user


def _row(account: Account, counter: Counter, now: float) -> dict[str, Any]:
    locked = counter.until if counter.until > now else None
    return {
        "user": account.user,
        "state": account.state,
        "method": "totp" if account.sealed_secret is not None else None,
        "algorithm": account.params.algorithm if account.sealed_secret is not None else None,
        "digits": account.params.digits if account.sealed_secret is not None else None,
        "period": account.params.period if account.sealed_secret is not None else None,
        "enrolled_at": iso(account.enrolled_at),
        "last_verified_at": iso(account.last_verified_at),
        "last_rhost": account.last_rhost,
        "failed_attempts": counter.failures,
        "locked_until": ("until unlocked" if locked is not None and math.isinf(locked)
                         else iso(locked)),
        "exempt_reason": account.exempt_reason,
        "exempt_until": iso(account.exempt_until),
        "enrol_by": iso(account.deadline) if account.state == "pending" else None,
        "clock_offset_steps": account.clock_offset,
    }


class AccountOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
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
            **{action: self._lifecycle(action) for action in lifecycle.ACTIONS},
        }

    async def _audit(
        self, caller: Caller, op: str, target: str, outcome: str = "success", **extra: Any
    ) -> None:
        """One record per target of an administrative action, with the actor."""
        await self.ctx.audit.record(
            "control", outcome=outcome, op=op, actor_uid=caller.uid, actor=caller.name,
            user=target, **extra,
        )

    async def _row_for(self, user: str) -> dict[str, Any]:
        account = await self.ctx.store.get_account(user)
        if account is None:
            return {"user": user, "state": "none", "method": None, "enrolled_at": None,
                    "last_verified_at": None, "last_rhost": None, "failed_attempts": 0,
                    "locked_until": None, "clock_offset_steps": 0}
        guard = await self.ctx.store.get_guard(user, "*")
        return _row(account, guard.account, self.ctx.clock())

    async def status(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        user = user_field(request)
        row = await self._row_for(user)
        row["enrolment_pending"] = await self.ctx.store.get_pending(user) is not None
        row["recovery_codes_left"] = await self.ctx.store.recovery_codes_left(user)
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
        64 KiB frame holds.
        """
        state, group = request.get("state"), request.get("group")
        sort = request.get("sort") or "user"
        if sort not in LIST_COLUMNS:
            raise RequestError(f"cannot sort by {sort!r}; choose one of {', '.join(LIST_COLUMNS)}")
        now = self.ctx.clock()
        rows = [_row(a, c, now) for a, c in await self.ctx.store.accounts()]
        if state:
            rows = [r for r in rows if r["state"] == state]
        if group:
            members = set(await lifecycle.targets(self.ctx, {"group": group}))
            rows = [r for r in rows if r["user"] in members]
        present = [r for r in rows if r[sort] is not None]
        present.sort(key=lambda r: r[sort], reverse=bool(request.get("descending")))
        rows = present + [r for r in rows if r[sort] is None]
        return _frames(rows)

    async def enroll_begin(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        user = user_field(request)
        if not await asyncio.to_thread(nss.user_exists, user):
            raise NoSuchUser(f"there is no user {user!r} on this system")
        account = await self.ctx.store.get_account(user)
        state = account.state if account is not None else "none"
        if state == "active":
            raise AlreadyEnrolled(
                f"{user} is already enrolled; `mfa reset {user}` first to replace the token"
            )
        if state in ("suspended", "exempt"):
            raise lifecycle.TransitionRefused(
                f"{user} is {state}; an administrator must resume or unexempt it first"
            )
        offer = await enrolment.begin(self.ctx, user, _params(self.ctx, request))
        await self._audit(caller, "enroll_begin", user, state="pending")
        return {
            "user": user, "secret": offer.secret, "uri": offer.uri,
            "algorithm": offer.params.algorithm, "digits": offer.params.digits,
            "period": offer.params.period,
        }

    async def enroll_confirm(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        user = user_field(request)
        answer = request.get("code")
        if not isinstance(answer, str):
            raise RequestError("the request needs a code")
        codes = await enrolment.confirm(self.ctx, user, answer)
        if codes is None:
            raise WrongCode(
                "that code is not right for the new key; check the phone's clock and try "
                "the code that is showing now"
            )
        await self._audit(caller, "enroll_confirm", user, state="active")
        return {"user": user, "state": "active", "recovery_codes": codes}

    async def recovery_codes(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """How many are left; with `regenerate`, a new set (a user must give a current code)."""
        user = user_field(request)
        account = await self.ctx.store.get_account(user)
        if account is None or account.state != "active" or account.sealed_secret is None:
            raise NotEnrolled(f"{user} has no active token, so no recovery codes")
        if not request.get("regenerate"):
            return {"user": user, "remaining": await self.ctx.store.recovery_codes_left(user)}
        if not caller.is_admin:
            await self._prove(account, request.get("code"))
        codes = await enrolment.new_recovery_codes(self.ctx, user)
        await self._audit(caller, "recovery_codes", user, regenerated=len(codes))
        return {"user": user, "codes": codes}

    async def _prove(self, account: Account, answer: Any) -> None:
        """A user acting on their own token shows they hold it: a current, unused code."""
        code = totp.normalise(answer, account.params.digits) if isinstance(answer, str) else None
        now = self.ctx.clock()
        assert account.sealed_secret is not None
        secret = self.ctx.box.open(account.user, account.sealed_secret)
        found = (totp.match(secret, account.params, code, now, self.ctx.config.totp.window)
                 if code is not None else None)
        if found is None or not await self.ctx.store.consume_step(
            account.user, found.step, found.offset, now, login=None
        ):
            raise WrongCode("give a current code from your authenticator app (--code)")

    async def unlock(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Clear locks, source blocks and failure counts (pam_faillock --reset)."""
        unlocked = []
        for user in await lifecycle.targets(self.ctx, _with_user(request)):
            if await self.ctx.guard.unlock(user):
                unlocked.append(user)
                await self._audit(caller, "unlock", user)
                await self.ctx.audit.record(
                    "lock_cleared", outcome="success", user=user,
                    reason="unlocked by administrator", actor=caller.name, actor_uid=caller.uid,
                )
        return {"unlocked": unlocked}

    def _lifecycle(self, action: str) -> Handler:
        async def run(caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
            reason = request.get("reason")
            if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
                raise RequestError(f"`reason` must be text of at most {MAX_REASON} characters")
            until = parse_time(request.get("until"), "until")
            changed, refused = [], []
            for user in await lifecycle.targets(self.ctx, _with_user(request)):
                try:
                    change = await lifecycle.apply(self.ctx, action, user, reason=reason,
                                                   until=until)
                except RequestError as exc:
                    refused.append({"user": user, "error": exc.code, "message": str(exc)})
                    await self._audit(caller, action, user, outcome="refused", message=str(exc))
                    continue
                changed.append({"user": user, "from": change.before, "to": change.after})
                await self._audit(caller, action, user, before=change.before,
                                  after=change.after, reason=reason, until=iso(until))
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
    params = TokenParams(
        request.get("algorithm") or base.algorithm,
        request.get("digits") or base.digits,
        request.get("period") or base.period,
    )
    if params.algorithm not in totp.SECRET_BYTES or params.digits not in (6, 8) or (
        params.period not in (30, 60)
    ):
        raise RequestError("token parameters: algorithm SHA1/SHA256/SHA512, digits 6 or 8, "
                           "period 30 or 60")
    return params

"""Administrators' account changes: require, suspend, resume, disable, reset, exempt, unexempt.

One table says which state each action may start from and where it leads;
anything else is refused with a reason a person can act on. A change is
planned first, recorded with the actor and the target, and only then
committed (accounts.py), so no change is ever in force without its record.

    require   none, disabled          -> pending   (must enrol, by the grace deadline)
    suspend   active, pending         -> suspended (token kept, second factor skipped)
    resume    suspended               -> active if a token is kept, else pending
    disable   any but disabled, none  -> disabled  (token and recovery codes erased)
    reset     any                     -> pending   (token erased, enrol again)
    exempt    any but exempt          -> exempt    (reason required, optional expiry)
    unexempt  exempt                  -> active if a token is kept, else disabled
                                         (no token and no explicit setting: groups
                                         and mode decide again)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from mfad import identity, nss
from mfad.context import Context
from mfad.errors import NoSuchUser, RequestError
from mfad.identity import Identity, valid_user_name
from mfad.model import Account, State, StateChange, state_of

ACTIONS = ("require", "suspend", "resume", "disable", "reset", "exempt", "unexempt")

_S = State
_FROM: dict[str, frozenset[State]] = {
    "require": frozenset({_S.NONE, _S.DISABLED}),
    "suspend": frozenset({_S.ACTIVE, _S.PENDING}),
    "resume": frozenset({_S.SUSPENDED}),
    "disable": frozenset({_S.ACTIVE, _S.PENDING, _S.SUSPENDED, _S.EXEMPT}),
    "reset": frozenset(State),
    "exempt": frozenset(State) - {_S.EXEMPT},
    "unexempt": frozenset({_S.EXEMPT}),
}

_WHY_NOT = {
    ("require", _S.ACTIVE): "is already enrolled",
    ("require", _S.PENDING): "is already required to enrol",
    ("require", _S.SUSPENDED): "is suspended; `mfa resume` it instead",
    ("require", _S.EXEMPT): "is exempt; `mfa unexempt` it first",
    ("suspend", _S.SUSPENDED): "is already suspended",
    ("resume", _S.ACTIVE): "is not suspended",
}


class TransitionRefused(RequestError):
    """An action that does not apply to the account's current state."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A change worked out but not made: the caller records it, then `commit`s it."""

    user: str
    before: State
    after: State
    change: StateChange


def _kept_token(account: Account | None) -> bool:
    return account is not None and account.has_factor


async def plan(
    ctx: Context,
    action: str,
    ident: Identity,
    *,
    reason: str | None = None,
    until: float | None = None,
) -> Plan:
    """What `action` would do to one user; TransitionRefused if it does not fit the state."""
    account = await identity.account_of(ctx, ident)
    user = ident.name
    before = state_of(account)
    if before not in _FROM[action]:
        why = _WHY_NOT.get((action, before), f"is {before}")
        raise TransitionRefused(f"cannot {action} {user}: {user} {why}")
    grace = ctx.config.enrolment.grace_days * 86400
    deadline = ctx.clock() + grace if grace > 0 else None
    if action in ("require", "reset"):
        change = StateChange(_S.PENDING, deadline, erase=action == "reset", uid=ident.uid)
    elif action == "suspend":
        change = StateChange(_S.SUSPENDED, uid=ident.uid)
    elif action == "resume" or action == "unexempt":
        if _kept_token(account):
            change = StateChange(_S.ACTIVE, uid=ident.uid)
        elif action == "resume":
            change = StateChange(_S.PENDING, deadline, uid=ident.uid)
        else:  # "none" again: not an explicit setting
            change = StateChange(_S.DISABLED, uid=ident.uid)
    elif action == "disable":
        change = StateChange(_S.DISABLED, erase=True, uid=ident.uid)
    else:  # exempt
        if not reason:
            raise RequestError("an exemption needs a reason (--reason)")
        change = StateChange(_S.EXEMPT, exempt_reason=reason, exempt_until=until, uid=ident.uid)
    return Plan(user, before, change.state, change)


async def commit(ctx: Context, planned: Plan) -> None:
    await ctx.store.set_state(planned.user, planned.change, ctx.clock())


async def group_members(group: str) -> list[str]:
    """The members of `group` from NSS (none is an answer); NoSuchUser if there is no group."""
    members = await asyncio.to_thread(nss.group_members, group)
    if members is None:
        raise NoSuchUser(f"there is no group {group!r} on this system")
    return members


async def targets(ctx: Context, request: dict[str, Any]) -> list[str]:
    """The names a request means: `users`, members of `group`, or every account (`all`).

    Names as given; each is resolved (identity.resolve) by the caller, one by one,
    so that one unknown name refuses that name only.
    """
    users = request.get("users") or []
    if not isinstance(users, list) or not all(valid_user_name(u) for u in users):
        raise RequestError("`users` must be a list of user names")
    names = list(users)
    group = request.get("group")
    if group is not None:
        if not isinstance(group, str) or not group:
            raise RequestError("`group` must be a group name")
        names += await group_members(group)
    if request.get("all") is True:
        names += [account.user for account, _ in await ctx.store.accounts()]
    if not names:
        if group is not None or request.get("all") is True:
            raise RequestError("no users matched: the group has no members, or no accounts exist")
        raise RequestError("name at least one user, a group, or all")
    return list(dict.fromkeys(names))

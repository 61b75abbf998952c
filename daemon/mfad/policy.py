"""Who must give a second factor for this login: config, account state and groups.

Precedence, highest first (shared/DESIGN.md), for the login's PAM service:

1. the mode for this service (``services:`` entry, else ``mode``) is ``off`` → skip
2. the user is ``exempt`` (and the exemption has not expired) or ``suspended`` → skip
3. (the user is locked → deny: lockout.Guard, consulted by the session)
4. the user is ``active`` → a code is required
5. the user is ``pending`` (an administrator's ``mfa require``) → must enrol
6. the user is in an ``exempt_groups`` group → skip
7. the user is in a ``require_groups`` group, or the mode is ``required`` → must enrol
8. otherwise (mode ``optional``) → skip

``disabled`` and no row at all are not explicit settings: such users fall
through to the group and mode rules. An expired exemption no longer counts
and the user falls through too.

An exemption that has expired no longer counts: the user is then treated as
``active`` if they kept a token, else as having no row.

Where the rules say "must enrol" for a name that no NSS source knows, the
session asks for a code like for an enrolled user and always fails, so the
conversation does not reveal which names exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mfad.config import Config
from mfad.store import Account


class Action(enum.Enum):
    SKIP = "skip"  # no second factor needed: PAM_IGNORE, never PAM_SUCCESS
    CODE = "code"  # ask for a verification code
    ENROL = "enrol"  # must enrol before (or while) logging in


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str


def needs_groups(config: Config, account: Account | None, now: float) -> bool:
    """Whether deciding needs the user's NSS groups (a lookup worth avoiding)."""
    if not (config.require_groups or config.exempt_groups):
        return False
    return account is None or account.state == "disabled" or exemption_expired(account, now)


def decide(
    config: Config, service: str, account: Account | None, groups: frozenset[str], now: float
) -> Decision:
    """Apply the precedence rules above."""
    mode = config.mode_for(service)
    if mode == "off":
        return Decision(Action.SKIP, "mode_off")
    state = account.state if account is not None else "none"
    if account is not None and exemption_expired(account, now):
        state = "active" if account.sealed_secret is not None else "none"
    if state == "exempt":
        return Decision(Action.SKIP, "exempt")
    if state == "suspended":
        return Decision(Action.SKIP, "suspended")
    if state == "active":
        return Decision(Action.CODE, "enrolled")
    if state == "pending":
        return Decision(Action.ENROL, "required_for_user")
    if groups & set(config.exempt_groups):
        return Decision(Action.SKIP, "exempt_group")
    if groups & set(config.require_groups):
        reason = "required_by_group"
    elif mode == "required":
        reason = "required_by_mode"
    else:
        return Decision(Action.SKIP, "optional_not_enrolled")
    return Decision(Action.ENROL, reason)


def exemption_expired(account: Account, now: float) -> bool:
    return (
        account.state == "exempt" and account.exempt_until is not None
        and account.exempt_until <= now
    )

"""Who must give a second factor for this login: config, account state, lock and groups.

The precedence is decided here and nowhere else. `RULES` lists it, highest
first, in the words README's table uses (tests/test_docs.py checks the two
agree), and `decide` returns the first rule that applies:

- ``disabled`` and no account at all are not explicit settings: such users fall
  through to the group and mode rules. An exemption past its expiry no longer
  counts: the user is treated as ``active`` if they kept a token, else as
  having no account (the session ends the exemption for good).
- A lock (or a block of this source) after wrong codes refuses a user who
  would be asked for a code or to enrol, and only them: an exempt or suspended
  user is skipped whatever their counters say.
- Where the rules say "must enrol" for a name that no NSS source knows, the
  session asks for a code like for an enrolled user and always fails, so the
  conversation does not reveal which names exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mfad.config import Config
from mfad.lockout import Refusal
from mfad.model import Account, State, state_of


class Action(enum.Enum):
    SKIP = "skip"  # no second factor needed: PAM_IGNORE, never PAM_SUCCESS
    CODE = "code"  # ask for a verification code
    ENROL = "enrol"  # must enrol before (or while) logging in
    REFUSE = "refuse"  # locked or blocked after too many wrong codes


@dataclass(frozen=True, slots=True)
class Rule:
    reason: str  # the audit records' reason
    when: str  # as README's table says it
    action: Action


RULES = (
    Rule(
        "mode_off",
        "the mode for the login's PAM service (its `services` entry, else `mode`) is `off`",
        Action.SKIP,
    ),
    Rule("exempt", "the user is `exempt` (and the exemption has not expired)", Action.SKIP),
    Rule("suspended", "the user is `suspended`", Action.SKIP),
    Rule(
        "locked",
        "the user is locked, or this remote host blocked for the user, after too many wrong codes",
        Action.REFUSE,
    ),
    Rule("enrolled", "the user is `active` (enrolled)", Action.CODE),
    Rule(
        "required_for_user",
        "the user is `pending`: required by name (`mfa require`, `mfa reset`)",
        Action.ENROL,
    ),
    Rule("exempt_group", "the user is in a group listed in `exempt_groups`", Action.SKIP),
    Rule("required_by_group", "the user is in a group listed in `require_groups`", Action.ENROL),
    Rule("required_by_mode", "the mode is `required`", Action.ENROL),
    Rule("optional_not_enrolled", "otherwise (mode `optional`)", Action.SKIP),
)
_BY_REASON = {rule.reason: rule for rule in RULES}


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # the rule's
    refusal: Refusal | None = None  # REFUSE: the lock or block
    then: Decision | None = None  # REFUSE: what applies unlocked (a CODE or ENROL rule)


def _rule(reason: str) -> Decision:
    return Decision(_BY_REASON[reason].action, reason)


def needs_groups(config: Config, account: Account | None, now: float) -> bool:
    """Whether deciding needs the user's NSS groups (a lookup worth avoiding)."""
    if not (config.require_groups or config.exempt_groups):
        return False
    return effective_state(account, now) in (State.NONE, State.DISABLED)


def effective_state(account: Account | None, now: float) -> State:
    """The state the rules see: an expired exemption is `active` with a token, else none."""
    if account is not None and exemption_expired(account, now):
        return State.ACTIVE if account.has_factor else State.NONE
    return state_of(account)


def decide(
    config: Config,
    service: str,
    account: Account | None,
    groups: frozenset[str],
    refusal: Refusal | None,
    now: float,
) -> Decision:
    """The first of RULES that applies to this login."""
    if config.mode_for(service) == "off":
        return _rule("mode_off")
    state = effective_state(account, now)
    if state is State.EXEMPT:
        return _rule("exempt")
    if state is State.SUSPENDED:
        return _rule("suspended")
    unlocked = _unlocked(config, service, state, groups)
    if refusal is not None and unlocked.action in (Action.CODE, Action.ENROL):
        return Decision(Action.REFUSE, "locked", refusal, unlocked)
    return unlocked


def _unlocked(config: Config, service: str, state: State, groups: frozenset[str]) -> Decision:
    if state is State.ACTIVE:
        return _rule("enrolled")
    if state is State.PENDING:
        return _rule("required_for_user")
    if groups & set(config.exempt_groups):
        return _rule("exempt_group")
    if groups & set(config.require_groups):
        return _rule("required_by_group")
    if config.mode_for(service) == "required":
        return _rule("required_by_mode")
    return _rule("optional_not_enrolled")


def exemption_expired(account: Account, now: float) -> bool:
    return (
        account.state is State.EXEMPT
        and account.exempt_until is not None
        and account.exempt_until <= now
    )

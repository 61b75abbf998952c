"""Who must give a second factor for this login, decided from config and account state.

Precedence, highest first (shared/DESIGN.md): global ``mode: off`` skips
everyone; an ``active`` account must give a code; otherwise ``mode: optional``
skips, and ``mode: required`` refuses a known user who has not enrolled.

A name that no NSS source knows gets the code prompt like an enrolled user and
then always fails, so the conversation does not reveal which names exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mfad.store import Account


class Action(enum.Enum):
    SKIP = "skip"  # no second factor needed: PAM_IGNORE, never PAM_SUCCESS
    CODE = "code"  # ask for a verification code
    DENY = "deny"  # refuse without asking


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    message: str | None = None  # shown to the user on DENY


NOT_ENROLLED_MESSAGE = (
    "Multi-factor authentication is required for this account, but it is not set up. "
    "Contact your administrator."
)


def decide(mode: str, account: Account | None, user_exists: bool) -> Decision:
    """Apply the precedence rules; `user_exists` is only consulted for unenrolled users."""
    if mode == "off":
        return Decision(Action.SKIP, "mode_off")
    if account is not None and account.state == "active":
        return Decision(Action.CODE, "enrolled")
    if mode == "optional":
        return Decision(Action.SKIP, "optional_not_enrolled")
    if not user_exists:
        return Decision(Action.CODE, "unknown_user")
    return Decision(Action.DENY, "not_enrolled", NOT_ENROLLED_MESSAGE)

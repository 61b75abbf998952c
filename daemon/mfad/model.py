"""The domain: accounts and their states, tokens, enrolments, logins, guard counters.

Plain values, shared by the rules (policy, verify, lockout, lifecycle) and the
store, which keeps them; nothing here does I/O. A fact about an account lives
here once: the states an account can be in are `State`, and "none" is the
absence of an account.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.StrEnum):
    """An account's lifecycle state (README, "Account states")."""

    NONE = "none"  # no account: never configured, or forgotten
    PENDING = "pending"  # must enrol; offered enrolment at login if allowed
    ACTIVE = "active"  # enrolled, confirmed by a correct code
    SUSPENDED = "suspended"  # token kept, second factor skipped until resumed
    DISABLED = "disabled"  # token and recovery codes erased, history kept
    EXEMPT = "exempt"  # skipped, with a reason and an optional expiry


def state_of(account: Account | None) -> State:
    return State.NONE if account is None else account.state


class Kind(enum.StrEnum):
    """What moves a token's codes on: the clock (RFC 6238) or a counter (RFC 4226)."""

    TOTP = "totp"  # authenticator apps: a code per time step of `period` seconds
    HOTP = "hotp"  # hardware tokens, imported pam_oath / google-authenticator counters
    # no token: a random code mailed to the confirmed address (Address) at each login. The
    # user's method is this one value (accounts.kind), whatever it is: never a second field.
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class TokenParams:
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30  # TOTP only; an HOTP token keeps the default, unused
    kind: Kind = Kind.TOTP


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    state: State
    sealed_secret: bytes | None
    params: TokenParams
    enrolled_at: float | None
    # The last moving factor used, the one fact replay protection needs for both kinds: a
    # TOTP time step, or an HOTP counter. A code for it or an earlier one is refused.
    last_step: int | None
    last_verified_at: float | None
    last_rhost: str | None
    clock_offset: int  # steps between the phone's clock and ours at the last success
    deadline: float | None = None  # pending: enrol before this, or login is refused
    exempt_reason: str | None = None
    exempt_until: float | None = None  # exempt: None means no expiry
    state_changed_at: float | None = None
    uid: int | None = None  # the owner's uid when bound; None: written before uids were kept

    @property
    def has_factor(self) -> bool:
        """Something a login can be asked for: a token, or the email method (no secret)."""
        return self.sealed_secret is not None or self.params.kind is Kind.EMAIL


@dataclass(frozen=True, slots=True)
class Address:
    """Where a user's email codes go. Unconfirmed (`confirmed_at` None) while a code sent
    to it by self-service has not come back; an administrator's is confirmed when set."""

    user: str
    address: str
    confirmed_at: float | None
    uid: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


class CodePurpose(enum.StrEnum):
    """What a mailed code is for; part of its digest, so one cannot serve as another."""

    LOGIN = "login"  # the email method's code at a login
    CONFIRM = "confirm"  # proves a self-service address reaches its owner
    RECOVERY = "recovery"  # a lost device: one login, then the account is suspended


@dataclass(frozen=True, slots=True)
class Site:
    """Where a login comes from, as PAM told us."""

    service: str
    rhost: str


@dataclass(frozen=True, slots=True)
class Login:
    at: float
    service: str
    rhost: str
    method: str  # "totp" | "hotp" | "email" | "recovery" | "email_recovery"


@dataclass(frozen=True, slots=True)
class PendingEnrolment:
    user: str
    sealed_secret: bytes
    params: TokenParams
    created_at: float
    uid: int | None = None  # whose it is: a re-created user with the same name gets none of it
    expires_at: float | None = None  # after this the secret is void and enrolment starts over
    origin: str | None = None  # where it was shown: "login:<guard source>" or "control:<uid>"


@dataclass(frozen=True, slots=True)
class Counter:
    """Consecutive wrong codes since `first_at`, and a lock or block that may be in force."""

    failures: int = 0
    first_at: float = 0.0
    until: float = 0.0  # locked/blocked until this time; 0 = not; inf = until an admin unlocks
    total: int = 0  # wrong codes since the last success, across automatic unlocks


@dataclass(frozen=True, slots=True)
class SourceBlock:
    """A per-source block in force: `user`'s codes from `source` (lockout.login_source or
    control_source) are refused until `until`."""

    user: str
    source: str
    until: float


@dataclass(frozen=True, slots=True)
class GuardState:
    account: Counter  # all sources together: the account lock
    source: Counter  # this (user, remote host) pair: the per-source block


@dataclass(frozen=True, slots=True)
class StateChange:
    state: State
    deadline: float | None = None
    exempt_reason: str | None = None
    exempt_until: float | None = None
    erase: bool = False  # drop secret, pending enrolment and recovery codes; history stays
    uid: int | None = None  # the owner, bound on a new row (or a row that has none yet)

"""The daemon's exceptions, one tree; each message is written for the person who reads it.

    MfaError
    ├── ConfigError            the config file is unusable (names file, line and key)
    ├── ProtocolError          a peer broke the framing or the conversation order
    ├── StoreError             the store cannot be read or written
    │   └── KeyFileError       the secret key file is missing, unreadable or malformed
    ├── AuditError             the audit log cannot be written
    └── RequestError           a control request that is refused; carries a wire error code
        ├── Forbidden
        ├── NoSuchUser
        ├── NotEnrolled
        ├── AlreadyEnrolled
        ├── WrongCode
        ├── Locked             the guard refuses to check a code now (lock or source block)
        ├── RateLimited        too many control requests from one uid
        ├── StaleAccount       the account under a name belongs to a uid that no longer has it
        ├── EnrolmentRefused   the account's state does not allow enrolling now
        └── NoPendingEnrolment

Exceptions become protocol outcomes in exactly one place per socket
(session.run for PAM, control.handle for the control socket); a peer never
sees exception text other than a RequestError's message.
"""

from __future__ import annotations


class MfaError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(MfaError):
    """The configuration cannot be used; the message names where and why."""


class ProtocolError(MfaError):
    """A peer sent something the protocol does not allow."""


class StoreError(MfaError):
    """The store failed; logins fail closed."""


class KeyFileError(StoreError):
    """The encryption key file is unusable."""


class AuditError(MfaError):
    """The audit log cannot be written; logins fail closed."""


class RequestError(MfaError):
    """A control request that is refused, with a code the client can switch on."""

    code = "bad_request"


class Forbidden(RequestError):
    code = "forbidden"


class NoSuchUser(RequestError):
    code = "no_such_user"


class NotEnrolled(RequestError):
    code = "not_enrolled"


class AlreadyEnrolled(RequestError):
    code = "already_enrolled"


class WrongCode(RequestError):
    code = "wrong_code"


class Locked(RequestError):
    code = "locked"


class RateLimited(RequestError):
    code = "rate_limited"


class StaleAccount(RequestError):
    code = "stale_account"


class EnrolmentRefused(RequestError):
    code = "bad_request"


class NoPendingEnrolment(RequestError):
    code = "no_pending_enrolment"

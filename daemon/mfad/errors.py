"""The daemon's exceptions, one tree; each message is written for the person who reads it.

    MfaError
    ├── ConfigError            the config file is unusable (names file, line and key)
    ├── StoreError             the store cannot be read or written
    │   └── KeyFileError       the secret key file is missing, unreadable or malformed
    ├── AuditError             the audit log cannot be written
    ├── MailError              a message could not be handed to the SMTP server
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

    ProtocolError              a peer broke the framing or the conversation order

ProtocolError is mfa_wire.errors.ProtocolError, re-exported here: the framing
(mfa_wire.framing) raises it and the wire package imports nothing from mfad, so
it stands beside MfaError, not under it. Every handler names it on its own
(session.run, server.py); none expects ``except MfaError`` to catch it. A
RequestError's ``code`` is an mfa_wire.errors.ErrorCode, the one list of the
control socket's error codes.

Exceptions become protocol outcomes in exactly one place per socket
(session.run for PAM, control.handle for the control socket); a peer never
sees exception text other than a RequestError's message.
"""

from __future__ import annotations

from mfa_wire.errors import ErrorCode, ProtocolError

__all__ = [
    "AlreadyEnrolled",
    "AuditError",
    "ConfigError",
    "EnrolmentRefused",
    "ErrorCode",
    "Forbidden",
    "KeyFileError",
    "Locked",
    "MailError",
    "MfaError",
    "NoPendingEnrolment",
    "NoSuchUser",
    "NotEnrolled",
    "ProtocolError",
    "RateLimited",
    "RequestError",
    "StaleAccount",
    "StoreError",
    "WrongCode",
]


class MfaError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(MfaError):
    """The configuration cannot be used; the message names where and why."""


class StoreError(MfaError):
    """The store failed; logins fail closed."""


class KeyFileError(StoreError):
    """The encryption key file is unusable."""


class AuditError(MfaError):
    """The audit log cannot be written; logins fail closed."""


class MailError(MfaError):
    """The SMTP server could not be reached, refused TLS, AUTH or the message; the message
    says which and what to check (never the password)."""


class RequestError(MfaError):
    """A control request that is refused, with a code the client can switch on."""

    code: ErrorCode = ErrorCode.BAD_REQUEST


class Forbidden(RequestError):
    code = ErrorCode.FORBIDDEN


class NoSuchUser(RequestError):
    code = ErrorCode.NO_SUCH_USER


class NotEnrolled(RequestError):
    code = ErrorCode.NOT_ENROLLED


class AlreadyEnrolled(RequestError):
    code = ErrorCode.ALREADY_ENROLLED


class WrongCode(RequestError):
    code = ErrorCode.WRONG_CODE


class Locked(RequestError):
    code = ErrorCode.LOCKED


class RateLimited(RequestError):
    code = ErrorCode.RATE_LIMITED


class StaleAccount(RequestError):
    code = ErrorCode.STALE_ACCOUNT


class EnrolmentRefused(RequestError):
    code = ErrorCode.BAD_REQUEST


class NoPendingEnrolment(RequestError):
    code = ErrorCode.NO_PENDING_ENROLMENT

"""What `mfa` exits with, and why; each exception is a click.ClickException with its exit code.

    CliError (1)                 anything not listed below
    ├── DaemonUnreachable (3)    no socket, nobody listening, no answer in time
    ├── Forbidden (4)            the daemon refused: not your account and not an admin
    ├── NotFound (5)             no such user, or the user is not enrolled
    ├── WrongCode (6)            the verification code was not accepted
    ├── ChainBroken (7)          `mfa audit verify`: the audit trail's hash chain is broken
    ├── Refused (8)              an account change was refused for some of the users named
    ├── Locked (9)               the account, or this source, is locked after wrong codes
    └── RateLimited (10)         too many requests from this user for now

Exit code 2 is click's own, for a usage error. The daemon's wire error codes
(mfa_wire.errors.ErrorCode, docs/protocol.md) map to these in `from_response`,
the one place that does.
A message is shown with its control characters escaped (mfa_cli.display.safe):
it often quotes the daemon, and a user name there may hold terminal escapes.
"""

from __future__ import annotations

import click

from mfa_cli.display import safe
from mfa_wire.errors import ErrorCode

EXIT_CODES = """\b
Exit codes:
  0  success
  1  any other error (the message says which), or a question answered no
  2  usage error (unknown option, missing argument)
  3  mfad is not reachable (not running, or no answer)
  4  not allowed: only root or the admin group may act on other users,
     list accounts, or change, exempt or unlock them
  5  no such user or group, or the user is not enrolled; for the
     account changes (require, suspend, ...), unlock and forget: a user
     named does not exist
  6  the verification code was not accepted
  7  mfa audit verify: the audit trail was altered (edited, deleted,
     reordered or truncated records); the first bad record is shown
  8  an account change was refused for at least one user, because it
     does not fit their state (each reason is printed; the other users
     named were changed); mfa forget: a user named still exists
  9  locked: the account, or the host it is used from, is locked after
     too many wrong codes (the message says until when)
 10  too many requests from this user in a short time: wait, then retry"""


class CliError(click.ClickException):
    """An error a person can act on; click prints "Error: <message>" to stderr.

    ``message`` is the raw text (build it from raw values, never from already
    escaped ones); it is escaped once, here, when shown.
    """

    exit_code = 1

    def format_message(self) -> str:
        return safe(self.message)


class DaemonUnreachable(CliError):
    exit_code = 3


class Forbidden(CliError):
    exit_code = 4


class NotFound(CliError):
    exit_code = 5


class WrongCode(CliError):
    exit_code = 6


class ChainBroken(CliError):
    exit_code = 7


class Refused(CliError):
    exit_code = 8


class Locked(CliError):
    exit_code = 9


class RateLimited(CliError):
    exit_code = 10


_BY_WIRE_CODE: dict[str, type[CliError]] = {
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NO_SUCH_USER: NotFound,
    ErrorCode.NOT_ENROLLED: NotFound,
    ErrorCode.WRONG_CODE: WrongCode,
    ErrorCode.LOCKED: Locked,
    ErrorCode.RATE_LIMITED: RateLimited,
}


def from_response(error: str, message: str) -> CliError:
    """The exception for a daemon's ``{"ok": false, "error": ..., "message": ...}``.

    Codes this client does not know (a newer daemon) are still shown, with exit code 1.
    The message comes from the daemon and may quote a user name as given: it is kept
    raw here and escaped when shown (CliError.format_message).
    """
    return _BY_WIRE_CODE.get(error, CliError)(message or f"mfad refused the request ({error})")

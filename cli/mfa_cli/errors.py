"""What `mfa` exits with, and why; each exception is a click.ClickException with its exit code.

    CliError (1)                 anything not listed below
    ├── DaemonUnreachable (3)    no socket, nobody listening, no answer in time
    ├── Forbidden (4)            the daemon refused: not your account and not an admin
    ├── NotFound (5)             no such user, or the user is not enrolled
    ├── WrongCode (6)            the verification code was not accepted
    ├── ChainBroken (7)          `mfa audit verify`: the audit trail's hash chain is broken
    └── Refused (8)              an account change was refused for some of the users named

Exit code 2 is click's own, for a usage error. The daemon's wire error codes
(docs/protocol.md) map to these in `from_response`, the one place that does.
"""

from __future__ import annotations

import click

EXIT_CODES = """\b
Exit codes:
  0  success
  1  any other error (the message says which), or a question answered no
  2  usage error (unknown option, missing argument)
  3  mfad is not reachable (not running, or no answer)
  4  not allowed: only root or the admin group may act on other users,
     list accounts, or change, exempt or unlock them
  5  no such user or group, or the user is not enrolled; for the
     account changes (require, suspend, ...): a user named does not exist
  6  the verification code was not accepted
  7  mfa audit verify: the audit trail was altered (edited, deleted,
     reordered or truncated records); the first bad record is shown
  8  an account change was refused for at least one user, because it
     does not fit their state (each reason is printed; the other users
     named were changed)"""


class CliError(click.ClickException):
    """An error a person can act on; click prints "Error: <message>" to stderr."""

    exit_code = 1


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


_BY_WIRE_CODE: dict[str, type[CliError]] = {
    "forbidden": Forbidden,
    "no_such_user": NotFound,
    "not_enrolled": NotFound,
    "wrong_code": WrongCode,
}


def from_response(error: str, message: str) -> CliError:
    """The exception for a daemon's ``{"ok": false, "error": ..., "message": ...}``.

    Codes this client does not know (a newer daemon) are still shown, with exit code 1.
    """
    return _BY_WIRE_CODE.get(error, CliError)(message or f"mfad refused the request ({error})")

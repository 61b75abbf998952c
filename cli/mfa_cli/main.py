"""The `mfa` command: enrol, inspect and administer second factors by asking mfad.

The group builds one DaemonClient into ``ctx.obj``; commands receive it through
``pass_client`` (click's examples/repo shape). Errors are mfa_cli.errors
exceptions, each with its exit code, listed in ``mfa --help``. The commands
live in modules named for what they do: enrol (enroll, recovery-codes),
accounts (status, show, list), lifecycle (require ... unexempt, unlock, forget),
imports (import google-authenticator / oath, resync), audit. Whatever the daemon
sends is printed through mfa_cli.display.
"""

from __future__ import annotations

from pathlib import Path

import click

from mfa_cli import __version__
from mfa_cli.accounts import list_accounts, show, status
from mfa_cli.audit import audit
from mfa_cli.client import DEFAULT_SOCKET, DaemonClient
from mfa_cli.doctor import doctor
from mfa_cli.enrol import enroll, recovery_codes
from mfa_cli.errors import EXIT_CODES
from mfa_cli.imports import import_tokens, resync
from mfa_cli.lifecycle import (
    disable,
    exempt,
    forget,
    require,
    reset,
    resume,
    suspend,
    unexempt,
    unlock,
)
from mfa_cli.methods import email_address, method
from mfa_cli.metrics import metrics
from mfa_cli.paminstall import pam


class _Ordered(click.Group):
    """Lists commands in the order they were added (yourself first, then administration)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=_Ordered,
    epilog=f"""\b
Examples, for yourself:
  mfa enroll                     enrol: scan the QR code, type a code, keep the
                                 recovery codes it then shows
  mfa status                     your state, token and last login
  mfa show                       the same and your recent second-factor logins
  mfa recovery-codes --regenerate  a new set of recovery codes (asks for a code)

\b
Examples, for root and the admin group:
  mfa enroll alice --digits 8    enrol alice with 8-digit codes
  mfa status alice               alice's state, token, lock
  mfa list --state pending       who still has to enrol (--json, --csv)
  mfa require --group staff      everyone in staff must enrol
  mfa suspend alice              skip alice's codes for now, keep her token
  mfa resume alice               ask for them again
  mfa reset alice                new phone: enrol again at the next login
  mfa disable alice              erase alice's secret and recovery codes
  mfa exempt backup --reason 'service account' --until 30d
  mfa unexempt backup            end the exemption
  mfa unlock alice               lift a lock after too many wrong codes
  mfa forget alice               after `userdel alice`: drop mfad's account of
                                 her (token, codes, history; the audit keeps all)
  mfa email alice a@example.com  the address alice's codes by email go to
  mfa method email alice         alice gets a code by email at each login
  mfa enroll alice --hotp < key  a hardware token (HOTP) whose key you have
  mfa resync alice               a hardware token pressed too often: two codes
  mfa import google-authenticator --all --dry-run
                                 take over ~/.google_authenticator files
  mfa import oath /etc/users.oath  take over pam_oath's tokens
  mfa audit --since 2h           the audit trail; see `mfa audit --help`
  mfa metrics                    counters for Prometheus (logins, locks, errors)
  mfa pam install sshd           ask for the code in sshd's PAM stack (root)
  mfa doctor                     is the second factor in force? (root)

{EXIT_CODES}""",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    envvar="MFA_SOCKET",
    show_envvar=True,
    help="mfad's control socket.",
)
@click.version_option(__version__, prog_name="mfa")
@click.pass_context
def cli(ctx: click.Context, socket_path: Path) -> None:
    """Manage second factors (TOTP authenticator codes) for logins on this machine.

    Every command asks the mfad daemon; root and the admin group may act on
    any user, everyone else on their own account only (enroll, status, show,
    recovery-codes).
    """
    ctx.obj = DaemonClient(socket_path)


for command in (
    enroll,
    status,
    show,
    recovery_codes,
    list_accounts,
    require,
    suspend,
    resume,
    disable,
    reset,
    exempt,
    unexempt,
    unlock,
    forget,
    email_address,
    method,
    resync,
    import_tokens,
    audit,
    metrics,
    pam,
    doctor,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the `mfa` script."""
    cli(prog_name="mfa")

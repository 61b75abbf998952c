"""`mfa email` (a user's address for codes by email) and `mfa method` (totp or email).

`mfa email USER ADDRESS`: an administrator's address is confirmed at once; a
user's own (`mfa email ADDRESS` names them) is mailed a code, which
`mfa email --confirm` asks for (typed at a prompt, never in argv). `mfa method
email|totp`: administrators name users, ``--group`` or ``--all`` as for the
state changes; a user may switch themselves where mfad's policy allows.
"""

from __future__ import annotations

from typing import Any

import click

from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean
from mfa_cli.errors import NotFound, Refused
from mfa_cli.identity import invoking_user
from mfa_cli.lifecycle import _print_refusals, _targets
from mfa_wire.errors import ErrorCode


@click.command("email", short_help="Set (or confirm) the address codes by email go to.")
@click.argument("args", nargs=-1, metavar="[USER] [ADDRESS]")
@click.option("--confirm", is_flag=True, help="Type the code mailed to your new address.")
@pass_client
def email_address(client: DaemonClient, args: tuple[str, ...], confirm: bool) -> None:
    """Set USER's (default: your) address for codes by email, or confirm it.

    An administrator's address is confirmed at once. Your own is mailed a code:
    run `mfa email --confirm` and type it, then `mfa method email`.

    \b
    Examples:
      mfa email alice alice@example.com     (administrator)
      mfa email me@example.com; mfa email --confirm
    """
    if confirm:
        if len(args) > 1:
            raise click.UsageError("--confirm takes at most a USER")
        user = args[0] if args else invoking_user()
        code = click.prompt("Code from the mail", hide_input=True)
        result = clean(client.request("email_confirm", user=user, code=code))
        click.echo(f"{result['user']}: {result['address']} confirmed")
        return
    if len(args) == 1:
        user, address = invoking_user(), args[0]
    elif len(args) == 2:
        user, address = args
    else:
        raise click.UsageError("give [USER] ADDRESS, or --confirm")
    result = clean(client.request("email_set", user=user, address=address))
    if result.get("confirmed"):
        click.echo(f"{result['user']}: {result['address']}")
    else:
        click.echo(
            f"{result['user']}: a code was mailed to {result['address']}; "
            "run `mfa email --confirm` and type it"
        )


@click.command(short_help="Switch USERS to codes by email, or to an authenticator.")
@click.argument("method", type=click.Choice(["email", "totp"]))
@click.argument("users", nargs=-1, metavar="[USER]...")
@click.option("--group", metavar="GROUP", help="Also every member of GROUP (from NSS).")
@click.option("--all", "everyone", is_flag=True, help="Every account mfad knows.")
@pass_client
def method(
    client: DaemonClient, method: str, users: tuple[str, ...], group: str | None, everyone: bool
) -> None:
    """Switch USERS (default: you) to METHOD: `email` (a code mailed at each login, to a
    confirmed address) or `totp` (an authenticator app: enrol at the next login or with
    `mfa enroll`). Exit code 5 if a user named does not exist, else 8 if any was refused.

    \b
    Examples:
      mfa method email alice; mfa method totp --group admins
    """
    fields: dict[str, Any] = (
        _targets(users, group, everyone)
        if users or group or everyone
        else {"user": invoking_user()}
    )
    answer = client.request("method", method=method, **fields)
    for change in clean(answer.get("changed") or []):
        note = " (already)" if change.get("unchanged") else ""
        click.echo(f"{change['user']}: {change['method']}{note}")
    refused = answer.get("refused") or []
    _print_refusals(refused)
    if any(r.get("error") == ErrorCode.NO_SUCH_USER for r in refused):
        raise NotFound("not changed (see above)")
    if refused:
        raise Refused("not changed (see above)")

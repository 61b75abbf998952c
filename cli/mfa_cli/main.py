"""The `mfa` command: enrol, inspect and disable second factors by asking mfad.

The group builds one DaemonClient into ``ctx.obj``; commands receive it through
``pass_client`` (click's examples/repo shape). Errors are mfa_cli.errors
exceptions, each with its exit code, listed in ``mfa --help``.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import click

from mfa_cli import __version__
from mfa_cli.audit import audit
from mfa_cli.client import DEFAULT_SOCKET, DaemonClient
from mfa_cli.errors import EXIT_CODES, CliError, WrongCode
from mfad.qrtext import render_qr

MAX_TRIES = 3
"""Codes `mfa enroll` asks for before giving up, as many as a login allows."""

pass_client = click.make_pass_decorator(DaemonClient)


@click.group(
    epilog=f"""\b
Examples:
  mfa enroll              enrol yourself: scan the QR code, type a code
  mfa enroll alice        (root or admin group) enrol alice
  mfa status alice        show alice's state and last login
  mfa disable alice       erase alice's secret
  mfa audit --since 2h    (root or admin group) the audit trail; see `mfa audit --help`

{EXIT_CODES}"""
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
    any user, everyone else on their own account only.
    """
    ctx.obj = DaemonClient(socket_path)


def _invoking_user() -> str:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise CliError(f"uid {uid} has no user name; name the user explicitly") from None


def _grouped(secret: str) -> str:
    """The base32 key in groups of four, as people read it aloud; apps ignore the spaces."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _normalise_code(code: str) -> str:
    # Apps show "123 456"; people copy it that way.
    return "".join(code.split()).replace("-", "")


def _confirm(client: DaemonClient, user: str, code: str, digits: int | None) -> str | None:
    """Send one code for the pending enrolment: None once it is active, else why not.

    A malformed code is refused here, without a round trip.
    """
    code = _normalise_code(code)
    if not (code.isascii() and code.isdigit()) or (digits and len(code) != digits):
        return f"A verification code is {digits or 'six or eight'} digits."
    try:
        result = client.request("enroll_confirm", user=user, code=code)
    except WrongCode:
        return "Incorrect verification code."
    if result.get("state") != "active":
        return "Incorrect verification code."
    return None


def _show_enrolment(begun: dict[str, Any], invert: bool) -> None:
    click.echo("Scan this QR code with an authenticator app:")
    click.echo()
    click.echo(render_qr(begun["uri"], invert=invert))
    click.echo()
    if not invert:
        click.echo("Drawn for a dark terminal; if it does not scan, try --invert.")
    click.echo("Or add the key by hand:")
    click.echo(f"  Account: {begun['user']}")
    click.echo(f"  Key:     {_grouped(begun['secret'])}")
    click.echo(
        f"  Type:    time-based, {begun['algorithm']}, {begun['digits']} digits, "
        f"every {begun['period']} s"
    )
    click.echo(f"  URI:     {begun['uri']}")
    click.echo()


@cli.command()
@click.argument("user", required=False)
@click.option(
    "--code",
    metavar="CODE",
    help="Confirm the pending enrolment (started by an earlier `mfa enroll`) with CODE "
    "instead of starting a new one; for scripts.",
)
@click.option("--invert", is_flag=True, help="Draw the QR code for a light-background terminal.")
@pass_client
def enroll(client: DaemonClient, user: str | None, code: str | None, invert: bool) -> None:
    """Enrol USER (default: you) for authenticator codes.

    Shows a QR code, the otpauth:// URI and the key for an authenticator app,
    then asks for the code the app shows. Only a correct code makes the
    enrolment active; until then the user's state does not change. Each run
    without --code starts over with a new key.

    \b
    Scripted, in two steps:
      mfa enroll alice < /dev/null     prints the key, leaves it pending
      mfa enroll alice --code 123456   confirms it
    """
    user = user or _invoking_user()
    if code is not None:
        refused = _confirm(client, user, code, digits=None)
        if refused:
            raise WrongCode(f"{refused} The enrolment of {user} is pending, not active.")
        click.echo(f"Enrolment of {user} is active.")
        return

    begun = client.request("enroll_begin", user=user)
    _show_enrolment(begun, invert)
    digits = int(begun["digits"])
    for _ in range(MAX_TRIES):
        try:
            answer = click.prompt("Verification code")
        except click.Abort:
            click.echo(err=True)
            raise CliError(
                f"No code entered; the enrolment of {user} is pending, not active. "
                f"Confirm it with `mfa enroll {user} --code CODE`."
            ) from None
        refused = _confirm(client, user, answer, digits)
        if not refused:
            click.echo(f"Enrolment of {user} is active.")
            return
        click.echo(refused, err=True)
    raise WrongCode(
        f"{MAX_TRIES} incorrect codes; the enrolment of {user} is pending, not active. "
        f"Check that the phone's clock is right, then confirm with "
        f"`mfa enroll {user} --code CODE`, or start over with `mfa enroll {user}`."
    )


def _state(result: dict[str, Any]) -> str:
    state = str(result.get("state"))
    return f"{state} (enrolment pending)" if result.get("enrolment_pending") else state


def _offset(result: dict[str, Any]) -> str:
    """The phone's clock drift seen at the last verified code, in words an admin can act on."""
    steps = result.get("clock_offset_steps")
    if steps is None or result.get("enrolled_at") is None:
        return "-"
    if steps == 0:
        return "0 steps (in sync)"
    period = result.get("period") or 30
    direction = "ahead" if steps > 0 else "behind"
    plural = "s" if abs(steps) != 1 else ""
    return f"{steps:+d} step{plural} (phone clock about {abs(steps) * period} s {direction})"


@cli.command()
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@pass_client
def status(client: DaemonClient, user: str | None, as_json: bool) -> None:
    """Show USER's (default: your) state, enrolment and last login."""
    result = client.request("status", user=user or _invoking_user())
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "ok"}, indent=2))
        return
    rows = [
        ("User", result.get("user")),
        ("State", _state(result)),
        ("Enrolled at", result.get("enrolled_at") or "-"),
        ("Last verified", result.get("last_verified_at") or "never"),
        ("Last remote host", result.get("last_rhost") or "-"),
        ("Clock offset", _offset(result)),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':<18}{value}")


@cli.command()
@click.argument("user")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_client
def disable(client: DaemonClient, user: str, yes: bool) -> None:
    """Disable USER's second factor: erase the secret, keep the history.

    USER must enrol again (`mfa enroll USER`) to use codes again.
    """
    before = _state(client.request("status", user=user))
    if not yes:
        click.confirm(f"Erase the authenticator secret of {user} (state: {before})?", abort=True)
    after = client.request("disable", user=user).get("state")
    click.echo(f"{user}: {before} -> {after}; secret erased, history kept.")


cli.add_command(audit)


def main() -> None:
    """Entry point of the `mfa` script."""
    cli(prog_name="mfa")

"""`mfa import` and `mfa resync`: tokens from google-authenticator and pam_oath, and HOTP
counters brought back. Root and the admin group only (mfad refuses anyone else).

Nothing secret goes on the command line or comes back: `mfa resync` reads its
two codes at a hidden prompt or from stdin, as `mfa enroll --confirm` does;
`mfa import oath` sends the usersfile it reads with your own permissions (so
you must be able to read it: run it as root, or give the admin group read
access); `mfa import google-authenticator` sends only names and a path
pattern, and mfad reads each user's file itself. The reports name users, what
was kept and what differs, never a key or a code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean, json_text, safe
from mfa_cli.enrol import normalise_code, read_code
from mfa_cli.errors import CliError

MAX_USERSFILE = 60 * 1024
"""Bytes of a usersfile sent in one request (a control frame holds 64 KiB)."""


def _report(answer: dict[str, Any], as_json: bool) -> None:
    """What mfad imported and skipped, and what it does differently from the old module."""
    answer = clean(answer)
    if as_json:
        click.echo(json_text({k: answer.get(k) for k in ("dry_run", "imported", "skipped")}))
        return
    dry = bool(answer.get("dry_run"))
    imported, skipped = answer.get("imported") or [], answer.get("skipped") or []
    verb = "Would import" if dry else "Imported"
    for row in imported:
        kind = "counter-based (HOTP)" if row.get("kind") == "hotp" else "time-based (TOTP)"
        click.echo(f"{verb} {safe(row['user'])}: {kind}")
        for note in row.get("notes") or []:
            click.echo(f"  - {safe(note)}")
    for row in skipped:
        click.echo(f"Skipped {safe(row['user'])}: {safe(row['reason'])}")
    absent = int(answer.get("without_file") or 0)
    if absent:
        click.echo(f"{absent} other users have no file.")
    click.echo(
        f"{len(imported)} {'to import' if dry else 'imported'}, {len(skipped)} skipped"
        + (" (dry run: nothing was changed)." if dry else ".")
    )
    if imported and not dry:
        click.echo(
            "Imported users log in with the same app or token as before. Once they have, "
            "remove the old files (and the old module's line in /etc/pam.d)."
        )


@click.group(
    "import",
    short_help="Take over tokens from google-authenticator or pam_oath.",
    epilog="""\b
Examples:
  mfa import google-authenticator --all --dry-run   what would be taken over
  mfa import google-authenticator alice bob
  mfa import oath /etc/users.oath
""",
)
def import_tokens() -> None:
    """Take over existing tokens, so nobody has to enrol again.

    Each imported user becomes an ordinary active account (lockout, audit,
    policy apply); a user who already has an active, suspended or exempt
    account is skipped. Use --dry-run first to see what would happen.
    """


@import_tokens.command(
    "google-authenticator",
    epilog="""\b
Examples:
  mfa import google-authenticator --all --dry-run
  mfa import google-authenticator alice --path '/var/lib/ga/${USER}'
""",
)
@click.argument("users", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every user NSS lists who has a file.")
@click.option(
    "--path",
    default="~/.google_authenticator",
    show_default=True,
    help="Where each user's file is, as pam_google_authenticator's secret= option: "
    "~/ is the user's home, ${HOME} and ${USER} are replaced.",
)
@click.option("--dry-run", is_flag=True, help="Read and report; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@pass_client
def google_authenticator(
    client: DaemonClient,
    users: tuple[str, ...],
    every: bool,
    path: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Import USERS' (or --all users') ~/.google_authenticator files.

    mfad reads each file itself, as root; it must be a regular file owned by
    the user, not a symbolic link, not writable by group or others. Kept: the
    key (TOTP or HOTP with its counter), the step size, the time steps already
    used, and the scratch codes, which become the user's recovery codes. mfad's
    own window, look-ahead, lockout and "never twice" rule replace the file's
    WINDOW_SIZE, RATE_LIMIT and DISALLOW_REUSE; the report says where they
    differ.

    \b
    Example:
      mfa import google-authenticator --all --dry-run
      mfa import google-authenticator alice bob
      mfa import google-authenticator --all --path '/var/lib/ga/${USER}'
    """
    if every == bool(users):
        raise click.UsageError("name the users to import, or --all (not both)")
    fields: dict[str, Any] = {"path": path, "dry_run": dry_run}
    if every:
        fields["all"] = True
    else:
        fields["users"] = list(users)
    _report(client.request("import_google_authenticator", **fields), as_json)


@import_tokens.command(
    "oath",
    epilog="""\b
Examples:
  mfa import oath /etc/users.oath --dry-run
  mfa import oath /etc/users.oath --json
""",
)
@click.argument("usersfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Read and report; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@pass_client
def oath(client: DaemonClient, usersfile: Path, dry_run: bool, as_json: bool) -> None:
    """Import the tokens of a pam_oath USERSFILE (e.g. /etc/users.oath).

    Lines like `HOTP alice - <hex key> 12 123456 2024-01-31T12:00:00L`;
    HOTP, HOTP/E/8, HOTP/T30, HOTP/T60/8 and the like. The counter and the
    last login time are kept, so codes already used stay used. A PIN is not
    kept (mfad asks for the code only). A malformed line is named and nothing
    of the file is imported. The file is read with your own permissions.

    \b
    Example:
      mfa import oath /etc/users.oath --dry-run
    """
    try:
        data = usersfile.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {usersfile}: {exc.strerror}") from None
    if len(data) > MAX_USERSFILE:
        raise CliError(
            f"{usersfile} is larger than {MAX_USERSFILE} bytes: split it into parts by "
            "lines and import each"
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"{usersfile} is not a pam_oath usersfile (not ASCII text)") from None
    answer = client.request("import_oath", text=text, name=str(usersfile), dry_run=dry_run)
    _report(answer, as_json)


@click.command(short_help="Bring USER's HOTP token back in step with two codes.")
@click.argument("user")
@pass_client
def resync(client: DaemonClient, user: str) -> None:
    """Resynchronise USER's counter-based (HOTP) token from two consecutive codes.

    A hardware token's button pressed many times without logging in moves its
    counter past what mfad looks ahead (hotp.look_ahead, 10). Press it twice
    and give both codes, in order: at two hidden prompts, or as two lines of
    stdin (never on the command line). Wrong codes count towards the user's
    lockout like any.

    \b
    Example:
      mfa resync alice                   asks for the two codes
      printf '%s\\n%s\\n' "$C1" "$C2" | mfa resync alice
    """
    first = read_code("First code")
    second = read_code("Next code") if first is not None else None
    if first is None or second is None:
        raise CliError("Two codes are needed, one after the other from the token.")
    answer = client.request(
        "resync", user=user, codes=[normalise_code(first), normalise_code(second)]
    )
    click.echo(f"{safe(answer['user'])}'s token is in step again; its next code logs in.")

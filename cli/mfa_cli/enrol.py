"""`mfa enroll` and `mfa recovery-codes`: a token and its recovery codes, by asking mfad.

Both are self-service: anyone may run them on their own account, root and the
admin group on anyone's. Recovery codes are printed once, when they are made;
mfad keeps only their digests and cannot show them again.

A verification code is never taken from the command line, where every local
user sees it in `ps` while `mfa` runs: it is typed at a prompt, or read from
stdin by scripts (``read_code``). A leftover ``--code`` is a usage error that
says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean, json_text, safe
from mfa_cli.errors import CliError, WrongCode
from mfa_cli.identity import invoking_user, is_root
from mfa_cli.times import utc_text

MAX_TRIES = 3
"""Codes `mfa enroll` asks for before giving up, as many as a login allows."""
LOW_RECOVERY_CODES = 2
"""At or below this many codes left, suggest a new set (a login warns at the same count)."""
CODE_IN_PS = (
    "--code is not accepted: a code on the command line is visible to every local user "
    "(in `ps`, /proc) while mfa runs."
)

F = TypeVar("F", bound=Callable[..., Any])


def no_code_option(instead: str) -> Callable[[F], F]:
    """A hidden ``--code CODE`` that is a usage error naming the replacement, ``instead``:
    the option once took the code itself, and scripts may still pass it."""

    def refuse(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.UsageError(f"{CODE_IN_PS} {instead}", ctx=ctx)

    return click.option("--code", metavar="CODE", hidden=True, expose_value=False, callback=refuse)


def read_code(prompt: str, err: bool = False) -> str | None:
    """A verification code: typed at a hidden prompt if stdin is a terminal (the prompt on
    stderr with `err`, to keep stdout for JSON), else the first line of stdin (for
    scripts). None if there is none: end of input, an empty line, or Ctrl-C / Ctrl-D at
    the prompt."""
    stdin = sys.stdin
    if stdin is None:
        return None
    if stdin.isatty():
        try:
            return str(click.prompt(prompt, hide_input=True, err=err))
        except click.Abort:
            click.echo(err=True)
            return None
    return stdin.readline().strip() or None


def _grouped(secret: str) -> str:
    """The base32 key in groups of four, as people read it aloud; apps ignore the spaces."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def normalise_code(code: str) -> str:
    # Apps show "123 456"; people copy it that way.
    return "".join(code.split()).replace("-", "")


def show_recovery_codes(codes: list[str], heading: str) -> None:
    """The codes (as mfad sent them), once, with the warning that this is the only time
    they are shown. ``heading`` is printed as it is: escape what it quotes."""
    if not codes:
        return
    click.echo(heading)
    for code in codes:
        click.echo(f"  {safe(code)}")
    click.echo("Store these safely, they are not shown again.")


def _confirm(
    client: DaemonClient, user: str, code: str, digits: int | None
) -> str | dict[str, Any]:
    """Send one code for the pending enrolment: mfad's answer once it is active, else why
    not (a string). A malformed code is refused here, without a round trip."""
    code = normalise_code(code)
    if not (code.isascii() and code.isdigit()) or (digits and len(code) != digits):
        return f"A verification code is {digits or 'six or eight'} digits."
    try:
        result = client.request("enroll_confirm", user=user, code=code)
    except WrongCode:
        return "Incorrect verification code."
    if result.get("state") != "active":
        return "Incorrect verification code."
    return result


def _activated(user: str, result: dict[str, Any], as_json: bool) -> None:
    """The enrolment is active: the recovery codes, once, and when the next code logs in."""
    codes = list(result.get("recovery_codes") or [])
    next_at = result.get("next_code_at")
    if as_json:
        click.echo(
            json_text(
                {"user": user, "state": "active", "recovery_codes": codes, "next_code_at": next_at},
                indent=2,
            )
        )
        return
    click.echo(f"Enrolment of {safe(user)} is active.")
    if next_at:
        click.echo(_next_code_note(str(next_at)))
    if codes:
        click.echo()
    show_recovery_codes(
        codes,
        "Recovery codes, each good for one login when the phone is not at hand:",
    )


def _next_code_note(next_at: str) -> str:
    """That the confirming code cannot log in (each code is accepted once), and which can."""
    used = "The code just given is used up and will not log in again"
    try:
        due = datetime.fromisoformat(next_at) > datetime.now(UTC)
    except ValueError:
        due = True
    if not due:  # confirmed with the code before the current one
        return f"{used}; the code the app shows now is a later one and logs in."
    return (
        f"{used}: log in with the next code the app shows (from {safe(utc_text(next_at))} UTC on)."
    )


def _pending(user: str, begun: dict[str, Any], as_json: bool) -> None:
    """No code given (a script): the enrolment waits; say how to confirm it."""
    step = f"echo CODE | mfa enroll {user} --confirm"
    if as_json:
        fields = ("user", "uri", "secret", "algorithm", "digits", "period")
        click.echo(
            json_text(
                {**{k: begun.get(k) for k in fields}, "state": "pending", "confirm_with": step},
                indent=2,
            )
        )
        return
    click.echo(
        f"The enrolment of {user} is pending, not active: add the key to the app, then "
        f"confirm it with the code the app shows: `{step}` (or `mfa enroll {user} "
        "--confirm` in a terminal, which asks for it).",
        err=True,
    )


def _show_enrolment(begun: dict[str, Any], invert: bool) -> None:
    qr = begun.get("qr")
    if isinstance(qr, str):
        # drawn by mfad (as at a login) in blocks and spaces, one line each; escaped all the same
        click.echo("Scan this QR code with an authenticator app:")
        click.echo()
        click.echo("\n".join(safe(line) for line in qr.split("\n")))
        click.echo()
        if not invert:
            click.echo("Drawn for a dark terminal; if it does not scan, try --invert.")
    else:
        click.echo("mfad sent no QR code (is it the same version as mfa?).")
    begun = clean(begun)
    click.echo("Or add the key by hand:")
    click.echo(f"  Account: {begun['user']}")
    click.echo(f"  Key:     {_grouped(begun['secret'])}")
    click.echo(
        f"  Type:    time-based, {begun['algorithm']}, {begun['digits']} digits, "
        f"every {begun['period']} s"
    )
    click.echo(f"  URI:     {begun['uri']}")
    click.echo()


def _next_answer(interactive: bool) -> str | None:
    """The next code: at a prompt in a terminal, else the next line of stdin; None if none."""
    if not interactive:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        return line.strip() or None
    try:
        return str(click.prompt("Verification code"))
    except click.Abort:
        click.echo(err=True)
        return None


@click.command(short_help="Enrol USER (default: you): QR code, key, recovery codes.")
@click.argument("user", required=False)
@click.option(
    "--confirm",
    is_flag=True,
    help="Confirm the pending enrolment (started by an earlier `mfa enroll`) instead of "
    "starting a new one: asks for the code (hidden), or reads it from stdin; for scripts.",
)
@no_code_option(
    "Confirm a pending enrolment with `mfa enroll USER --confirm`: it asks for the code "
    "(hidden), or reads it from stdin (echo CODE | mfa enroll USER --confirm)."
)
@click.option(
    "--digits",
    type=click.Choice(["6", "8"]),
    help="Digits per code, for apps or hardware tokens that need 8 (default: mfad's, normally 6).",
)
@click.option(
    "--algorithm",
    type=click.Choice(["SHA1", "SHA256", "SHA512"], case_sensitive=False),
    help="Hash of the codes (default: mfad's, normally SHA1; some apps ignore the "
    "others and show wrong codes).",
)
@click.option(
    "--period",
    type=click.Choice(["30", "60"]),
    help="Seconds each code lasts (default: mfad's, normally 30).",
)
@click.option("--invert", is_flag=True, help="Draw the QR code for a light-background terminal.")
@click.option(
    "--hotp",
    is_flag=True,
    help="A hardware (counter-based, RFC 4226) token whose key you have: the key is "
    "read at a hidden prompt or from stdin, never from the command line; the account is "
    "active at once. Administrators only.",
)
@click.option("--hex", "hex_key", is_flag=True, help="With --hotp: the key is hex, not base32.")
@click.option(
    "--counter",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="With --hotp: the token's next counter (codes before it count as used).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="For scripts: print a JSON object instead of the QR code and text, and never prompt: "
    "a new enrolment is left pending (confirm it with --confirm --json, the code on stdin).",
)
@pass_client
def enroll(
    client: DaemonClient,
    user: str | None,
    confirm: bool,
    digits: str | None,
    algorithm: str | None,
    period: str | None,
    invert: bool,
    hotp: bool,
    hex_key: bool,
    counter: int,
    as_json: bool,
) -> None:
    """Enrol USER (default: you) for authenticator codes.

    Shows a QR code, the otpauth:// URI and the key for an authenticator app,
    then asks for the code the app shows. Only a correct code makes the
    enrolment active; until then the user's state does not change. Then the
    recovery codes are shown, once. Each run without --confirm starts over with
    a new key.

    The code that confirms the enrolment is used up, like every accepted code
    (each is accepted once): log in with a later one (the output says from when).

    When stdin is not a terminal, the code is read from it instead; with nothing
    there the enrolment is left pending (exit code 0) and the next step is
    printed on stderr. --json prints a new enrolment as user, uri, secret,
    algorithm, digits, period, state "pending" and confirm_with (the command that
    confirms it), and with --confirm: user, state "active", recovery_codes and
    next_code_at (from when a code logs in).

    \b
    Scripted, in two steps (the code on stdin, never as an argument,
    where every local user would see it in `ps`):
      mfa enroll alice --json < /dev/null          the key as JSON, left pending
      echo 123456 | mfa enroll alice --confirm     confirms it, prints the recovery codes

    \b
    A hardware OATH token from its seed file (key on stdin):
      mfa enroll alice --hotp --hex < alice.seed
    """
    user = user or invoking_user()
    if hotp:
        if confirm or period or as_json:
            raise click.UsageError(
                "--hotp takes no --confirm, --period or --json: it is active at once"
            )
        _enroll_hotp(client, user, hex_key, counter, digits, algorithm)
        return
    if hex_key or counter:
        raise click.UsageError("--hex and --counter go with --hotp")
    stdin_is_terminal = sys.stdin is not None and sys.stdin.isatty()
    if confirm:
        if digits or algorithm or period:
            raise click.UsageError(
                "--digits, --algorithm and --period go with a new enrolment, not with --confirm"
            )
        code = read_code("Verification code", err=as_json)
        if code is None:
            raise CliError(
                f"No code given; the enrolment of {user} is pending, not active. "
                "Type the code the app shows at the prompt, or give it on stdin."
            )
        outcome = _confirm(client, user, code, digits=None)
        if isinstance(outcome, str):
            raise WrongCode(f"{outcome} The enrolment of {user} is pending, not active.")
        _activated(user, outcome, as_json)
        return

    params: dict[str, Any] = {}
    if algorithm:
        params["algorithm"] = algorithm.upper()
    if digits:
        params["digits"] = int(digits)
    if period:
        params["period"] = int(period)
    begun = client.request("enroll_begin", user=user, invert=invert, **params)
    if as_json:  # no code can come before the key it is made from, which is only now shown
        _pending(user, begun, as_json)
        return
    _show_enrolment(begun, invert)
    expected = int(begun["digits"])
    wrong = 0
    while wrong < MAX_TRIES:
        answer = _next_answer(stdin_is_terminal)
        if answer is None and stdin_is_terminal:
            raise CliError(
                f"No code entered; the enrolment of {user} is pending, not active. "
                f"Confirm it with `mfa enroll {user} --confirm` (it asks for the code)."
            )
        if answer is None and not wrong:  # a script that gives no code: step one of two
            _pending(user, begun, as_json)
            return
        if answer is None:
            break
        outcome = _confirm(client, user, answer, expected)
        if not isinstance(outcome, str):
            _activated(user, outcome, as_json)
            return
        click.echo(outcome, err=True)
        wrong += 1
    tries = f"{wrong} incorrect code{'' if wrong == 1 else 's'}"
    raise WrongCode(
        f"{tries}; the enrolment of {user} is pending, not active. "
        f"Check that the phone's clock is right, then confirm with "
        f"`mfa enroll {user} --confirm`, or start over with `mfa enroll {user}`."
    )


def _enroll_hotp(
    client: DaemonClient,
    user: str,
    hex_key: bool,
    counter: int,
    digits: str | None,
    algorithm: str | None,
) -> None:
    encoding = "hex" if hex_key else "base32"
    key = read_code(f"Token key ({encoding})")
    if key is None:
        raise CliError("No key given: type it at the prompt, or give it on stdin.")
    fields: dict[str, Any] = {"user": user, "secret": key, "encoding": encoding}
    fields["counter"] = counter
    if digits:
        fields["digits"] = int(digits)
    if algorithm:
        fields["algorithm"] = algorithm.upper()
    result = client.request("enroll_hotp", **fields)
    click.echo(f"{safe(user)} now logs in with the hardware token (HOTP).")
    click.echo()
    show_recovery_codes(
        list(result.get("recovery_codes") or []),
        "Recovery codes, each good for one login when the token is not at hand:",
    )


@click.command("recovery-codes", short_help="Recovery codes left; --regenerate a new set.")
@click.argument("user", required=False)
@click.option(
    "--regenerate",
    is_flag=True,
    help="Make a new set and show it; the old codes stop working. On your own "
    "account it asks for a current code from your app (hidden), or reads it from "
    "stdin. Root and the admin group need none for other users.",
)
@no_code_option(
    "`mfa recovery-codes --regenerate` asks for the code (hidden), or reads it from stdin "
    "(echo CODE | mfa recovery-codes --regenerate)."
)
@pass_client
def recovery_codes(client: DaemonClient, user: str | None, regenerate: bool) -> None:
    """How many recovery codes USER (default: you) has left; --regenerate makes new ones.

    A recovery code stands in for an authenticator code once, at the same
    prompt. The new set is shown once: keep it somewhere safe, apart from the
    phone.

    \b
    Example:
      mfa recovery-codes --regenerate    asks for a current code, shows the new set
    """
    target = user or invoking_user()
    if not regenerate:
        left = int(client.request("recovery_codes", user=target)["remaining"])
        click.echo(f"{safe(target)} has {left} recovery code{'' if left == 1 else 's'} left.")
        if left <= LOW_RECOVERY_CODES:
            named = f" {safe(user)}" if user else ""
            click.echo(f"Make a new set with `mfa recovery-codes{named} --regenerate`.")
        return
    fields: dict[str, Any] = {"user": target, "regenerate": True}
    # mfad wants proof of the token from anyone but an administrator acting on their own
    # account; root never needs it, and for an admin-group member a code does no harm.
    if not is_root() and target == invoking_user():
        code = read_code("Current verification code")
        if code is None:
            raise CliError(
                "No code given: a new set of recovery codes for your own account "
                "needs a current code from your authenticator app, typed at the "
                "prompt or given on stdin."
            )
        fields["code"] = normalise_code(code)
    codes = list(client.request("recovery_codes", **fields).get("codes") or [])
    show_recovery_codes(
        codes, f"New recovery codes for {safe(target)} (the old ones no longer work):"
    )

"""`mfa require|suspend|resume|disable|reset|exempt|unexempt`, `mfa unlock` and `mfa forget`.

Administrators only. Each names its users as arguments, as the members of one
``--group``, or (the state changes) as ``--all`` accounts mfad knows; mfad
applies the change to each user on its own and answers which changed and which
were refused (and why). This module prints both and picks the exit code:
5 if a user named does not exist, else 8 if any change was refused. `forget`
takes user names only (its users may no longer exist) and exits 5 if mfad has
no account for a name, else 8 if any was refused; `unlock` exits 5 for a name
nobody has. Names and reasons are printed escaped (mfa_cli.display.safe).

Each command is its own function. What they share is here once: the options
naming whom to act on (``_whom_options``, ``_reason_option``, both put on each
state change by ``_state_change``), the request fields (``_targets``), the
question asked before a change to every account or an erasure (``_confirm``),
sending the change and reporting it (``_change``), and the steps of a state
change in that order (``_run_action``, told what differs: when to ask, what,
and the note printed with each change).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from mfa_cli.accounts import UNLOCKED_BY_ADMIN, source_text
from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean, safe
from mfa_cli.errors import Forbidden, NotFound, Refused
from mfa_cli.times import TIME_HELP, parse_when, rfc3339, utc_text
from mfa_wire.errors import ErrorCode

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = (
    "Exit code 5 if a user named does not exist, else 8 if the change was refused "
    "for any user (the reasons are printed); the others are changed."
)
"""The epilog of every state change's help."""


def _whom_options(yes_help: str = "Do not ask for confirmation (of --all).") -> Callable[[F], F]:
    """``[USER]...``, ``--group``, ``--all`` and ``--yes``: whom a state change applies to,
    the same for each (``users``, ``group``, ``everyone`` and ``yes`` in the command)."""
    options = [
        click.argument("users", nargs=-1, metavar="[USER]..."),
        click.option("--group", metavar="GROUP", help="Also every member of GROUP (from NSS)."),
        click.option(
            "--all",
            "everyone",
            is_flag=True,
            help="Every account mfad knows (asks first unless --yes).",
        ),
        click.option("--yes", "-y", is_flag=True, help=yes_help),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_reason_option = click.option("--reason", help="Why, for the audit log.")
"""The optional ``--reason`` of every state change but exempt (whose reason is required)."""


def _targets(
    users: tuple[str, ...], group: str | None, everyone: bool = False, *, can_all: bool = True
) -> dict[str, Any]:
    """The request fields naming whom to act on; a usage error if nobody, or too many ways."""
    if everyone and (users or group):
        raise click.UsageError("--all cannot be combined with users or --group")
    if not (users or group or everyone):
        raise click.UsageError(
            "name at least one USER, or --group GROUP" + (", or --all" if can_all else "")
        )
    fields: dict[str, Any] = {}
    if users:
        fields["users"] = list(users)
    if group:
        fields["group"] = group
    if everyone:
        fields["all"] = True
    return fields


def _who(fields: dict[str, Any]) -> str:
    """Whom the request ``fields`` (from ``_targets``) name, in words; raw, not escaped."""
    if fields.get("all"):
        return "every account mfad knows"
    named = list(fields.get("users", []))
    if fields.get("group"):
        named.append(f"every member of group {fields['group']}")
    return ", ".join(named)


def _confirm(question: str) -> None:
    """Ask ``question`` (raw text, escaped here); "no" aborts with exit code 1."""
    click.confirm(safe(question), abort=True)


def _change(client: DaemonClient, action: str, fields: dict[str, Any], note: str = "") -> None:
    """Send the state change ``action`` for ``fields`` (``_targets`` and the action's own),
    print each change (``USER: from -> to`` and ``note``, which must be escaped already)
    and each refusal (to stderr), and exit 5 if a user named does not exist, else 8 if any
    change was refused."""
    try:
        answer = client.request(action, **fields)
    except Forbidden as exc:
        raise Forbidden(f"{exc.message}; {_who(fields)} not changed") from None
    changed = answer.get("changed") or []
    refused = answer.get("refused") or []
    for change in clean(changed):
        click.echo(f"{change['user']}: {change['from']} -> {change['to']}{note}")
    _print_refusals(refused)
    if not refused:
        return
    total = len(changed) + len(refused)
    summary = (
        "not changed (see above)"
        if total == 1
        else f"{len(refused)} of {total} users not changed (see above)"
    )
    if any(r.get("error") == ErrorCode.NO_SUCH_USER for r in refused):
        raise NotFound(summary)
    raise Refused(summary)


def _print_refusals(refused: list[dict[str, Any]]) -> None:
    """Each refusal, ``USER: refused: why``, to stderr."""
    for refusal in clean(refused):
        click.echo(
            f"{refusal['user']}: refused: {refusal.get('message') or refusal['error']}", err=True
        )


def _state_change(
    short_help: str,
    *,
    yes_help: str = "Do not ask for confirmation (of --all).",
    options: tuple[Callable[[F], F], ...] = (_reason_option,),
) -> Callable[[Callable[..., None]], click.Command]:
    """A state change command: its ``short_help`` and EPILOG, ``_whom_options`` (handed to
    it as ``**whom``, for ``_run_action``), then ``options`` (``--reason`` unless told)."""

    def apply(function: Callable[..., None]) -> click.Command:
        command: Callable[..., None] = pass_client(function)
        for option in reversed(options):
            command = option(command)
        command = _whom_options(yes_help)(command)
        return click.command(short_help=short_help, epilog=EPILOG)(command)

    return apply


def _run_action(
    client: DaemonClient,
    action: str,
    *,
    users: tuple[str, ...],
    group: str | None,
    everyone: bool,
    yes: bool,
    reason: str | None,
    until: str | None = None,
    always_ask: bool = False,
    question: Callable[[dict[str, Any]], str] | None = None,
    note: str = "",
) -> None:
    """The state change ``action`` for whom the options name (``_targets``), with ``reason``
    and ``until`` where given. Asks first unless ``yes`` if ``everyone`` (or, if
    ``always_ask``, always): ``question`` of the request fields, by default
    ``"Action WHOM?"``. Then ``_change`` sends it and prints each change with ``note``."""
    fields = _targets(users, group, everyone)
    if not yes and (everyone or always_ask):
        _confirm(question(fields) if question else f"{action.capitalize()} {_who(fields)}?")
    given = {"reason": reason, "until": until}
    _change(client, action, fields | {k: v for k, v in given.items() if v is not None}, note)


@_state_change("USERS must enrol (-> pending).")
def require(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """Require USERS to use a second factor: they must enrol (state pending),
    at their next login if enrolment at login is on, or with `mfa enroll`.

    Applies to users never configured (none) and disabled ones.

    \b
    Example:
      mfa require alice bob; mfa require --group staff
    """
    _run_action(client, "require", reason=reason, **whom)


@_state_change("Skip USERS' codes for now, keep the token (-> suspended).")
def suspend(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """Suspend the second factor of USERS: the token is kept but no code is asked
    for until `mfa resume` (a lost phone that will turn up, a trip without it).

    Applies to active and pending users.

    \b
    Example:
      mfa suspend alice --reason 'phone at repair, ticket 4711'
    """
    _run_action(client, "suspend", reason=reason, **whom)


@_state_change("Ask suspended USERS for codes again.")
def resume(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """Resume the second factor of suspended USERS: active again if they have a
    token, else pending (must enrol).

    \b
    Example:
      mfa resume alice
    """
    _run_action(client, "resume", reason=reason, **whom)


def _erase_question(client: DaemonClient, fields: dict[str, Any]) -> str:
    """What disable asks: with the state mfad has if one user is named alone, else whom."""
    users = fields.get("users", [])
    if len(users) == 1 and not fields.get("group"):
        state = client.request("status", user=users[0]).get("state")
        return f"Erase the authenticator secret of {users[0]} (state: {state})?"
    return f"Erase the authenticator secrets of {_who(fields)}?"


@_state_change(
    "Erase USERS' secret and recovery codes (-> disabled).",
    yes_help="Do not ask for confirmation.",
)
def disable(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """Disable the second factor of USERS: erase the secret and recovery codes,
    keep the history. Asks first unless --yes.

    The user must enrol again (`mfa enroll USER`) to use codes again; until
    then the global mode and groups decide whether a login asks for one.

    \b
    Example:
      mfa disable alice; mfa disable --yes --group leavers
    """
    note = " (secret and recovery codes erased, history kept)"
    _run_action(
        client,
        "disable",
        reason=reason,
        always_ask=True,
        question=lambda fields: _erase_question(client, fields),
        note=note,
        **whom,
    )


@_state_change("Erase USERS' token; enrol again (-> pending).")
def reset(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """Reset USERS to enrol again (state pending): the token and recovery codes
    are erased, and the next login offers enrolment. For a new phone.

    --all resets every account mfad knows, and asks first unless --yes.

    \b
    Example:
      mfa reset alice; mfa reset --all --yes
    """
    erased = "(their tokens and recovery codes are erased; each must enrol again)"
    _run_action(
        client,
        "reset",
        reason=reason,
        question=lambda fields: f"Reset {_who(fields)} {erased}?",
        note=" (token and recovery codes erased; must enrol again)",
        **whom,
    )


def _until_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An exemption's expiry, sent to mfad as an RFC 3339 UTC time; it must be in the future."""
    if value is None:
        return None
    now = datetime.now(UTC)
    try:
        moment = parse_when(value, now, ahead=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if moment <= now:
        raise click.BadParameter(f"{value!r} is in the past")
    return rfc3339(moment.replace(microsecond=0))


@_state_change(
    "Exempt USERS, with a reason and an optional expiry.",
    options=(
        click.option(
            "--reason",
            required=True,
            help="Why (recorded with the exemption and in the audit log).",
        ),
        click.option(
            "--until",
            metavar="TIME",
            callback=_until_option,
            help=f"When the exemption ends: {TIME_HELP}. Default: no expiry.",
        ),
    ),
)
def exempt(client: DaemonClient, reason: str, until: str | None, **whom: Any) -> None:
    """Exempt USERS from the second factor (service accounts, break-glass
    accounts), with a reason and optionally an expiry; the token, if any, is
    kept and comes back into force with `mfa unexempt` or when --until passes.

    \b
    Example:
      mfa exempt backup --reason 'rsync service account' --until 30d
    """
    expiry = f"until {safe(utc_text(until))} UTC" if until else "no expiry"
    _run_action(
        client, "exempt", reason=reason, until=until, note=f" ({safe(reason)}; {expiry})", **whom
    )


@_state_change("End USERS' exemption.")
def unexempt(client: DaemonClient, reason: str | None, **whom: Any) -> None:
    """End the exemption of USERS: active again if they kept a token, else
    as if never configured (none).

    \b
    Example:
      mfa unexempt backup
    """
    _run_action(client, "unexempt", reason=reason, **whom)


def _lifted(was: dict[str, Any]) -> list[str]:
    """What an unlock lifted, in words, from mfad's `cleared` entry for one user (raw)."""
    lifted = []
    until = was.get("locked_until")
    if until is not None:
        lock = "until an administrator unlocked it" if until == UNLOCKED_BY_ADMIN else until
        lifted.append(f"account lock ({lock}) lifted")
    for block in was.get("source_blocks") or []:
        lifted.append(
            f"{source_text(str(block.get('source')))} unblocked (was until {block.get('until')})"
        )
    return lifted


@click.command(short_help="Lift USERS' lock and host blocks after too many wrong codes.")
@click.argument("users", nargs=-1, metavar="[USER]...")
@click.option("--group", metavar="GROUP", help="Also every member of GROUP (from NSS).")
@pass_client
def unlock(client: DaemonClient, users: tuple[str, ...], group: str | None) -> None:
    """Lift the lockout of USERS: clear their account lock, the remote hosts blocked for
    them and their failure counts (like `faillock --reset`), and say which of these were
    in force. Users who were not locked are left as they are. A user NSS does not know
    (and mfad counts nothing for) is refused with exit code 5.

    \b
    Example:
      mfa unlock alice
    """
    fields = _targets(users, group, can_all=False)
    answer = client.request("unlock", **fields)
    unlocked = list(answer.get("unlocked") or [])
    spelt = answer.get("canonical") or {}  # each name as given -> as NSS spells it
    cleared = answer.get("cleared") or {}
    for user in unlocked:
        was = cleared.get(user) or {}
        lifted = _lifted(was)
        failures = was.get("failed_attempts") or 0
        counted = f"{failures} failed attempt{'' if failures == 1 else 's'} cleared"
        if lifted:
            click.echo(safe(f"{user}: unlocked: {'; '.join(lifted)}"))
        elif failures:
            click.echo(safe(f"{user}: was not locked or blocked ({counted})"))
        else:
            click.echo(safe(f"{user}: was not locked or blocked (failure counts cleared)"))
    refused = answer.get("refused") or []
    named = {spelt.get(user, user): user for user in users}
    for canonical, user in named.items():
        if canonical not in unlocked and user not in {r.get("user") for r in refused}:
            click.echo(f"{safe(user)}: was not locked or blocked")
    if group and not any(u not in named for u in unlocked):
        click.echo(f"No other member of group {safe(group)} was locked.")
    _print_refusals(refused)
    if refused:
        raise NotFound(
            "no such user (see above)"
            if len(refused) == 1
            else f"{len(refused)} users named do not exist (see above)"
        )


@click.command(short_help="Drop mfad's account of deleted or re-created USERS.")
@click.argument("users", nargs=-1, required=True, metavar="USER...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_client
def forget(client: DaemonClient, users: tuple[str, ...], yes: bool) -> None:
    """Forget USERS (root and the admin group only): remove mfad's account of each,
    its token, recovery codes, counters and login history. For a user who was
    deleted, or re-created with another uid (a new person under an old name must
    not inherit the old token). The audit trail keeps every record about them.
    Asks first unless --yes.

    Prints one line per user forgotten (with the state and uid mfad had) and one,
    on stderr, per user refused and why. Exit code 5 if mfad has no account for a
    name, else 8 if a user named still exists.

    \b
    Example:
      mfa forget alice                after `userdel alice`
    """
    if not yes:
        click.confirm(
            safe(
                f"Forget {', '.join(users)}: erase their tokens, recovery codes, "
                "counters and login history (the audit trail keeps its records)?"
            ),
            abort=True,
        )
    answer = client.request("forget", users=list(users))
    forgotten = answer.get("forgotten") or []
    refused = answer.get("refused") or []
    for entry in clean(forgotten):
        uid = entry.get("uid")
        was = f"was {entry.get('state') or '?'}" + (f", uid {uid}" if uid is not None else "")
        click.echo(f"{entry.get('user')}: forgotten ({was})")
    _print_refusals(refused)
    if refused:
        total = len(forgotten) + len(refused)
        summary = (
            "not forgotten (see above)"
            if total == 1
            else f"{len(refused)} of {total} users not forgotten (see above)"
        )
        if any(r.get("error") == ErrorCode.NO_SUCH_USER for r in refused):
            raise NotFound(summary)
        raise Refused(summary)

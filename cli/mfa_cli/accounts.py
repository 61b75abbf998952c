"""`mfa status`, `mfa show` and `mfa list`: what mfad knows about accounts, read-only.

status and show are self-service (your own account; root and the admin group:
anyone's); list is for root and the admin group. Times from mfad are RFC 3339
UTC; the list's table shows them as `YYYY-MM-DD HH:MM:SS` in UTC. What mfad
answers is printed through mfa_cli.display (control characters escaped).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import click

from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean, json_text, safe
from mfa_cli.identity import invoking_user
from mfa_cli.times import utc_text

COLUMNS = (
    # mfad's `list` field, the table's header; in mfad's order (mfad.accounts.LIST_COLUMNS)
    ("user", "USER"),
    ("state", "STATE"),
    ("method", "METHOD"),
    ("address", "ADDRESS"),
    ("enrolled_at", "ENROLLED (UTC)"),
    ("last_verified_at", "LAST VERIFIED (UTC)"),
    ("last_rhost", "LAST RHOST"),
    ("failed_attempts", "FAILED"),
    ("locked_until", "LOCKED UNTIL (UTC)"),
    ("exempt_reason", "EXEMPT BECAUSE"),
    ("exempt_until", "EXEMPT UNTIL (UTC)"),
    ("enrol_by", "ENROL BY (UTC)"),
    ("source_blocks", "BLOCKED SOURCES (UTC)"),
)
SORT_KEYS = tuple(key for key, _ in COLUMNS)
TABLE_ORDER = (*(k for k in SORT_KEYS if k != "exempt_reason"), "exempt_reason")
"""The free-text reason goes last in the table so that it cannot push the others apart."""

TIME_KEYS = frozenset(
    {"enrolled_at", "last_verified_at", "locked_until", "exempt_until", "enrol_by"}
)
CSV_KEYS = (*SORT_KEYS, "algorithm", "digits", "period", "clock_offset_steps")
STATES = ("pending", "active", "suspended", "disabled", "exempt")


def _column_name(text: str) -> str:
    """A column as people type it: lower case, words joined by '-', no '(UTC)'."""
    return "-".join(text.lower().replace("(utc)", "").replace("_", " ").split())


SORT_NAMES = {
    **{_column_name(header): key for key, header in COLUMNS},
    **{_column_name(key): key for key in SORT_KEYS},
}
"""--sort takes a column as the table heads it (FAILED, "LAST VERIFIED", last-verified) or
as mfad names it (failed_attempts), in any case."""


def _sort_column(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    key = SORT_NAMES.get(_column_name(value))
    if key is None:
        shown = ", ".join(_column_name(header) for _, header in COLUMNS)
        raise click.BadParameter(f"{value!r} is not a column; choose one of {shown}")
    return key


UNLOCKED_BY_ADMIN = "until unlocked"
"""mfad's `locked_until` for a lock that only an administrator lifts (unlock_time 0)."""


def _state(result: dict[str, Any]) -> str:
    state = str(result.get("state"))
    return f"{state} (enrolment pending)" if result.get("enrolment_pending") else state


def _offset(result: dict[str, Any]) -> str:
    """The phone's clock drift seen at the last verified code, in words an admin can act on."""
    steps = result.get("clock_offset_steps")
    if steps is None or result.get("enrolled_at") is None or result.get("method") == "hotp":
        return "-"
    if steps == 0:
        return "0 steps (in sync)"
    period = result.get("period") or 30
    direction = "ahead" if steps > 0 else "behind"
    plural = "s" if abs(steps) != 1 else ""
    return f"{steps:+d} step{plural} (phone clock about {abs(steps) * period} s {direction})"


def _token(result: dict[str, Any]) -> str:
    if not result.get("method"):
        return "-"
    if result["method"] == "email":  # no token: a code mailed to the address at each login
        return f"email, to {result.get('address') or '-'}"
    if result["method"] == "hotp":  # a counter, not a clock: no period
        used = result.get("hotp_counter")
        last = "none used yet" if used is None else f"last counter used {used}"
        return f"hotp, {result.get('algorithm')}, {result.get('digits')} digits, {last}"
    return (
        f"{result['method']}, {result.get('algorithm')}, {result.get('digits')} digits, "
        f"every {result.get('period')} s"
    )


def _address(result: dict[str, Any]) -> str:
    """The address codes by email go to, masked by mfad, and whether it is confirmed."""
    address = result.get("address")
    if not address:
        return "-"
    return address if result.get("address_confirmed") else f"{address} (not confirmed)"


def _locked(result: dict[str, Any]) -> str:
    until = result.get("locked_until")
    if until is None:
        return "-"
    return "until an administrator unlocks it" if until == UNLOCKED_BY_ADMIN else str(until)


def source_text(source: str) -> str:
    """A guard source key (mfad.lockout) in words: the remote host, or where codes came from."""
    kind, _, rest = source.partition(":")
    if kind == "host":
        return rest
    if kind == "uid":
        return f"mfa run by uid {rest}"
    return "local logins (no remote host)" if source == "local" else source


def _blocks_text(blocks: list[dict[str, Any]], when: Any = str) -> list[str]:
    return [f"{source_text(b.get('source', '?'))} until {when(b.get('until'))}" for b in blocks]


def _status_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    state = result.get("state")
    rows: list[tuple[str, Any]] = [("User", result.get("user")), ("State", _state(result))]
    if state == "pending" and result.get("enrol_by"):
        rows.append(("Enrol by", result["enrol_by"]))
    if state == "exempt":
        rows.append(("Exempt because", result.get("exempt_reason") or "-"))
        rows.append(("Exempt until", result.get("exempt_until") or "no expiry"))
    rows += [
        ("Token", _token(result)),
        ("Address", _address(result)),
        ("Enrolled at", result.get("enrolled_at") or "-"),
        ("Last verified", result.get("last_verified_at") or "never"),
        ("Last remote host", result.get("last_rhost") or "-"),
        ("Clock offset", _offset(result)),
    ]
    if result.get("method"):
        rows.append(("Recovery codes", f"{result.get('recovery_codes_left', 0)} left"))
    blocks = _blocks_text(result.get("source_blocks") or [])
    rows += [
        ("Failed attempts", result.get("failed_attempts", 0)),
        ("Locked", _locked(result)),
        ("Blocked sources", blocks[0] if blocks else "-"),
        *(("", more) for more in blocks[1:]),
    ]
    return rows


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    """Label: value lines; the values come from an answer already made safe (``clean``)."""
    for label, value in rows:
        click.echo(f"{label + ':' if label else '':<18}{value}")


def _as_json(result: dict[str, Any]) -> str:
    return json_text({k: v for k, v in result.items() if k != "ok"}, indent=2)


@click.command(
    short_help="USER's (default: your) state, token, last login, lock.",
    epilog="""\b
Examples:
  mfa status                 your own account
  mfa status alice --json    alice's, for a script (root and the admin group)
""",
)
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@pass_client
def status(client: DaemonClient, user: str | None, as_json: bool) -> None:
    """Show USER's (default: your) state, token, last login and lock."""
    result = client.request("status", user=user or invoking_user())
    if as_json:
        click.echo(_as_json(result))
        return
    _print_rows(_status_rows(clean(result)))


@click.command(
    short_help="status, and the recent second-factor logins.",
    epilog="""\b
Examples:
  mfa show                   your own account and your recent logins
  mfa show alice             alice's (root and the admin group)
""",
)
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@pass_client
def show(client: DaemonClient, user: str | None, as_json: bool) -> None:
    """Everything `mfa status` shows for USER (default: you), and the recent successful
    second-factor logins: time, PAM service, remote host, method (totp, hotp or recovery),
    newest first."""
    result = client.request("show", user=user or invoking_user())
    if as_json:
        click.echo(_as_json(result))
        return
    result = clean(result)
    _print_rows(_status_rows(result))
    history = result.get("history") or []
    click.echo()
    if not history:
        click.echo("Second-factor logins: none")
        return
    click.echo("Second-factor logins, newest first:")
    table = [("TIME (UTC)", "SERVICE", "REMOTE HOST", "METHOD")]
    table += [
        (
            utc_text(h.get("time")),
            h.get("service") or "-",
            h.get("rhost") or "-",
            h.get("method") or "-",
        )
        for h in history
    ]
    for line in _aligned(table):
        click.echo(f"  {line}")


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells padded to each column's widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or value == []:
        return "-"
    if key == "source_blocks":
        return ", ".join(_blocks_text(value, utc_text))
    if key == "locked_until" and value == UNLOCKED_BY_ADMIN:
        return "admin unlock"
    return utc_text(value) if key in TIME_KEYS else str(value)


def _csv_cell(row: dict[str, Any], key: str) -> str:
    """A CSV field: escaped text; the source blocks as `SOURCE until TIME`, joined by '; '."""
    value = row.get(key)
    if key == "source_blocks":
        return "; ".join(safe(f"{b.get('source')} until {b.get('until')}") for b in value or [])
    return "" if value is None else safe(value)


@click.command(
    "list",
    short_help="Every account: state, logins, locks, exemptions.",
    epilog="""\b
Examples:
  mfa list --state pending           who has not enrolled yet
  mfa list --group staff --sort failed --reverse
  mfa list --csv > accounts.csv      for a spreadsheet
""",
)
@click.option("--state", type=click.Choice(STATES), help="Only accounts in this state.")
@click.option("--group", metavar="GROUP", help="Only members of this group (from NSS).")
@click.option(
    "--sort",
    "sort_key",
    default="user",
    metavar="COLUMN",
    show_default=True,
    callback=_sort_column,
    help="Sort by COLUMN, named as the table heads it, in any case, with '-' or quotes "
    f"between words ({', '.join(_column_name(h) for _, h in COLUMNS)}), or as in the JSON "
    "(failed_attempts). Unset values come last.",
)
@click.option("--reverse", is_flag=True, help="Sort in descending order.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects, one per account.")
@click.option(
    "--csv", "as_csv", is_flag=True, help="CSV with a header row; empty fields for unset values."
)
@pass_client
def list_accounts(
    client: DaemonClient,
    state: str | None,
    group: str | None,
    sort_key: str,
    reverse: bool,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Every account mfad knows (root and the admin group only), one row each: state,
    method, when enrolled, last verified code and its remote host, failed attempts, lock,
    the remote hosts (sources) blocked for the user after wrong codes and until when,
    exemption (reason and expiry) and, for pending accounts, the enrolment deadline.

    Users never configured (state `none`) have no row. Control characters in names,
    hosts and reasons are shown escaped (ESC as \\x1b, a backslash as \\\\), in the CSV
    too; the JSON escapes them as \\u001b.
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    fields: dict[str, Any] = {"sort": sort_key, "descending": reverse}
    if state:
        fields["state"] = state
    if group:
        fields["group"] = group
    # Read as a stream so that a daemon sending the list in several frames is understood.
    rows: list[dict[str, Any]] = []
    for result in client.stream("list", **fields):
        rows += result.get("accounts") or []
    # mfad's descending order puts unset values first; "never verified" belongs at the end
    # either way. The sort is stable, so mfad's order stands otherwise.
    rows.sort(key=lambda r: r.get(sort_key) in (None, []))
    if as_json:
        click.echo(json_text(rows, indent=2))
    elif as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_KEYS)
        writer.writerows([_csv_cell(r, k) for k in CSV_KEYS] for r in rows)
        click.echo(out.getvalue(), nl=False)
    elif not rows:
        click.echo("No accounts match.", err=True)
    else:
        headers = dict(COLUMNS)
        table = [tuple(headers[k] for k in TABLE_ORDER)]
        table += [tuple(_cell(r, k) for k in TABLE_ORDER) for r in clean(rows)]
        for line in _aligned(table):
            click.echo(line)

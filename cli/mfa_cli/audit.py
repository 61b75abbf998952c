"""`mfa audit`: list, follow, verify and summarise the audit trail, by asking mfad.

The daemon reads its own log files (rotated ones too); this command only
formats what it answers. Every subcommand is for root and the admin group.
Records hold text from outside (user names of refused requests, remote hosts):
tables and reports show it through mfa_cli.display.clean, JSON through
json_text, so no control character reaches the terminal raw.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import click

from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import clean, json_text, safe
from mfa_cli.errors import ChainBroken, DaemonUnreachable
from mfa_cli.times import parse_when, rfc3339, utc_text
from mfa_wire.events import Event, Outcome

DEFAULT_LIMIT = 100
"""Records `mfa audit` lists by default: the most recent ones, like `journalctl -n`."""
FOLLOW_BACKLOG = 10
"""Records `mfa audit --follow` shows before the new ones, like `tail -f`."""

COLUMNS = (
    ("TIME (UTC)", 19),
    ("EVENT", max(len(e) for e in Event)),
    ("OUTCOME", max(len(o) for o in Outcome)),
    ("USER", 16),
    ("SERVICE", 10),
    ("RHOST", 20),
    ("METHOD", len("enrolment")),
    ("REASON", 0),
)
"""The table's columns and their widths (0: the rest of the line). Every event, outcome and
method mfad writes fits; a longer cell (a long user name or host, an event of a newer mfad)
is cut with an ellipsis, so that no row pushes its columns out of line (``--full``: never
cut, as `last -w` and `journalctl --full` do). A width cannot come from the records
themselves: a listing is printed as it streams in, and --follow never ends."""
ELLIPSIS = "…"


def _time_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A --since/--until value, sent to mfad as an RFC 3339 UTC time."""
    if value is None:
        return None
    try:
        return rfc3339(parse_when(value, datetime.now(UTC)))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _shown_time(record: dict[str, Any]) -> str:
    return utc_text(record.get("time", "-"))


def _detail(record: dict[str, Any]) -> str:
    """The REASON column: why, or for control records who did what."""
    event, reason = record.get("event"), record.get("reason")
    if event == Event.CONTROL:
        text = f"{record.get('op', '?')} by {record.get('actor', '?')}"
        return f"{text}: {reason}" if reason else text
    if event == Event.LOCK_CLEARED and record.get("source_blocks"):
        blocks = record["source_blocks"]
        hosts = ", ".join(
            str(b.get("source") if isinstance(b, dict) else b)
            for b in (blocks if isinstance(blocks, list) else [blocks])
        )
        return f"{reason or 'cleared'}; unblocked {hosts}"
    if event in (Event.LOCK_SET, Event.SOURCE_BLOCKED):
        return f"until {record['until']}" if record.get("until") else "until unlocked"
    if event == Event.ATTEMPT and reason:
        return f"{reason} (attempt {record.get('attempt', '?')})"
    return str(reason or record.get("message") or "")


HOST_WIDTH = 16  # of the HOST column, with --all-hosts


def _fit(value: str, width: int) -> str:
    """``value`` padded to ``width``, or cut to it with an ellipsis; width 0: as it is."""
    if not width:
        return value
    if len(value) > width:
        return value[: width - 1] + ELLIPSIS
    return value.ljust(width)


def _row(values: Iterable[str], full: bool = False) -> str:
    cells = [
        v.ljust(width) if full else _fit(v, width)
        for v, (_, width) in zip(values, COLUMNS, strict=True)
    ]
    return " ".join(cells).rstrip()


class _Printer:
    """Records as a table (header before the first) or as JSON lines."""

    def __init__(self, as_json: bool, full: bool = False, show_host: bool = False) -> None:
        self.as_json = as_json
        self.full = full
        self.show_host = show_host  # the fleet's records: each line starts with its host
        self.header_done = False

    def header(self) -> None:
        if not self.as_json and not self.header_done:
            click.echo(self._host_cell("HOST") + _row(name for name, _ in COLUMNS))
            self.header_done = True

    def _host_cell(self, host: str) -> str:
        if not self.show_host:
            return ""
        return (host.ljust(HOST_WIDTH) if self.full else _fit(host, HOST_WIDTH)) + " "

    def record(self, record: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json_text(record, ensure_ascii=False, separators=(",", ":")))
            return
        record = clean(record)
        self.header()
        click.echo(
            self._host_cell(str(record.get("host") or "-"))
            + _row(
                [
                    _shown_time(record),
                    *(
                        str(record.get(k) or "-")
                        for k in ("event", "outcome", "user", "service", "rhost", "method")
                    ),
                    _detail(record),
                ],
                self.full,
            )
        )


@click.group(
    invoke_without_command=True,
    epilog=f"""\b
Examples:
  mfa audit --user alice --since 2h     alice's records of the last two hours
  mfa audit --event login --outcome failure --since 7d --limit 0
  mfa audit --rhost 203.0.113.7 --json  as JSON lines, for jq
  mfa audit --follow                    new records as they are written
  mfa audit verify                      check the hash chain (exit 7 if broken)
  mfa audit verify --key-file vk.txt    and every record's seal, with the verification key
  mfa audit seal-init                   start sealing; prints the verification key once
  mfa audit summary --since 7d          what a reviewer looks at first

TIME is a duration back from now (30m, 2h, 7d, 1d12h) or a time: RFC 3339
(2025-01-31T08:00:00Z) or YYYY-MM-DD[ HH:MM] in local time. The listing shows
the last {DEFAULT_LIMIT} matching records (--follow: {FOLLOW_BACKLOG}) unless --limit says
otherwise; --limit 0 shows all.""",
)
@click.option("--user", help="Only records about this user (the target, for control records).")
@click.option("--event", help="Only this event: login, attempt, challenge, lock_set, control, ...")
@click.option("--outcome", help="Only this outcome: success, failure, skipped, refused, ...")
@click.option("--service", help="Only this PAM service (sshd, sudo, login, ...).")
@click.option("--rhost", help="Only this remote host.")
@click.option("--since", metavar="TIME", callback=_time_option, help="Only records from TIME on.")
@click.option("--until", metavar="TIME", callback=_time_option, help="Only records before TIME.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as logged.")
@click.option("--follow", "-f", is_flag=True, help="Keep going: show new records as they come.")
@click.option(
    "--all-hosts",
    is_flag=True,
    help="Every host of the fleet, from the shared store's audit table (PostgreSQL only).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Never cut a long user name, service or remote host with '…' (columns may then shift).",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=0),
    metavar="N",
    help="Show the most recent N matching records (0: all).",
)
@click.pass_context
def audit(
    ctx: click.Context,
    user: str | None,
    event: str | None,
    outcome: str | None,
    service: str | None,
    rhost: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    follow: bool,
    all_hosts: bool,
    full: bool,
    limit: int | None,
) -> None:
    """List the audit trail (root and the admin group only).

    A table of time, event, outcome, user, service, remote host, method (how
    a login succeeded: totp, recovery, enrolment) and reason, oldest first; a
    cell too long for its column ends in '…' (--full: never cut). Filters
    combine (all must match). Control characters in the records are shown
    escaped (ESC as \\x1b, a backslash as \\\\); --json
    escapes them as \\u001b, and is otherwise each record as logged.
    """
    if ctx.invoked_subcommand is not None:
        return
    client = ctx.find_object(DaemonClient)
    assert client is not None
    filters: dict[str, Any] = {
        name: value
        for name, value in (
            ("user", user),
            ("event", event),
            ("outcome", outcome),
            ("service", service),
            ("rhost", rhost),
            ("since", since),
            ("until", until),
        )
        if value is not None
    }
    if follow and all_hosts:
        raise click.UsageError("--follow shows this host's new records only; drop --all-hosts")
    if all_hosts:
        filters["all_hosts"] = True
    if limit is None:
        limit = FOLLOW_BACKLOG if follow else DEFAULT_LIMIT
    printer = _Printer(as_json, full, show_host=all_hosts)
    matched = 0
    following = False
    try:
        for result in client.stream(
            "audit_follow" if follow else "audit_query", limit=limit, **filters
        ):
            for record in result.get("records", []):
                printer.record(record)
            matched = int(result.get("matched", matched))
            if result.get("following"):
                following = True
                printer.header()
                click.echo("-- following new records; Ctrl-C to stop --", err=True)
            if result.get("missed"):
                click.echo(
                    f"-- {safe(result['missed'])} records skipped: this terminal fell "
                    "behind; `mfa audit` lists them --",
                    err=True,
                )
    except KeyboardInterrupt:
        return
    except DaemonUnreachable as exc:
        if following:
            raise DaemonUnreachable(
                "mfad closed the connection (it stopped or restarted); no more records"
            ) from exc
        raise
    if matched == 0 and not as_json:
        click.echo("No matching records.", err=True)
    elif limit and matched > limit:
        click.echo(
            f"(the last {limit} of {matched} matching records; --limit 0 shows all)", err=True
        )


def _read_key(source: str) -> str:
    """The verification key from a file, or from stdin for ``-``: never from argv, where
    every local user could read it in the process list (it can forge every epoch)."""
    text: str
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {source}: {exc}") from None
    if not text.strip():
        raise click.BadParameter(f"{'stdin' if source == '-' else source} holds no key")
    return text.strip()


@audit.command(
    epilog="""\b
Examples:
  mfa audit verify                          the hash chain only
  mfa audit verify --key-file - < vk.txt    and every record's seal
  mfa audit verify --all-hosts              each host's chain in the fleet's table
""",
)
@click.option(
    "--key-file",
    metavar="FILE",
    help="Also check every record's seal with the verification key in FILE (- reads stdin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's verdict as JSON.")
@click.option(
    "--all-hosts",
    is_flag=True,
    help="Check each host's chain in the shared store's audit table instead (PostgreSQL).",
)
@pass_client
def verify(client: DaemonClient, key_file: str | None, as_json: bool, all_hosts: bool) -> None:
    """Check the audit trail through every rotated file: the hash chain, and with
    --key-file each record's seal.

    Each record holds the hash of the one before, and the head file beside
    the log names the last record written. An edited, deleted, reordered or
    truncated record breaks the chain: the first bad one is shown and the exit
    code is 7. Exit 0 means the chain is whole.

    The chain alone does not stop someone who rewrites every later record and
    the head too. With the verification key that `mfa audit seal-init` printed,
    each record must also carry a MAC made with the key of its own epoch, and
    each epoch must end with its seal: a record of an epoch that had ended
    before an intruder came cannot be changed, added or removed unseen. The key
    is read from a file or stdin, never the command line, and mfad uses it for
    this check only.
    """
    if all_hosts:
        if key_file is not None:
            raise click.UsageError(
                "--key-file checks this host's sealed files; the fleet's table is checked "
                "by its chains (--all-hosts) only"
            )
        _verify_fleet(client.request("audit_verify", all_hosts=True), as_json)
        return
    fields = {"key": _read_key(key_file)} if key_file is not None else {}
    verdict = client.request("audit_verify", **fields)
    verdict.pop("ok", None)
    bad = verdict.get("first_bad")
    if as_json:
        click.echo(json_text(verdict, indent=2))
    elif bad is None:
        _say_intact(clean(verdict))
    else:
        shown = clean(bad)
        click.echo(f"Audit trail BROKEN: {shown['reason']}")
        click.echo(
            f"  where:   {shown['file']} line {shown['line']}"
            + (f" (record {shown['seq']})" if shown.get("seq") is not None else "")
        )
        click.echo(f"  why:     {shown['message']}")
        click.echo(f"  found:   {shown.get('record') or '(nothing: the line is gone)'}")
        click.echo(f"  records intact before it: {safe(verdict['records'])}")
        _say_sealing(clean(verdict))
    if bad is not None:  # the message is raw: CliError escapes it when shown
        at = f"record {bad['seq']}" if bad.get("seq") is not None else f"line {bad['line']}"
        raise ChainBroken(f"the audit trail is broken at {at} ({bad['reason']})")


def _verify_fleet(verdict: dict[str, Any], as_json: bool) -> None:
    """One line per host; exit 7 if any host's chain is broken in the table."""
    hosts = verdict.get("hosts") or []
    if as_json:
        click.echo(json_text({"hosts": hosts}, indent=2))
    for host in hosts if not as_json else []:
        shown = clean(host)
        span = f"records {shown['first_seq']}-{shown['last_seq']}" if shown["records"] else ""
        bad = shown.get("first_bad")
        if bad is None:
            click.echo(f"{shown['host']}: intact, {shown['records']} records {span}".rstrip())
        else:
            click.echo(
                f"{shown['host']}: BROKEN at record {bad['seq']} ({bad['reason']}: "
                f"{bad['message']}); {shown['records']} records intact before it"
            )
    if not hosts and not as_json:
        click.echo("The fleet's audit table holds no records yet.")
    broken = [h for h in hosts if h.get("first_bad")]
    if broken:
        names = ", ".join(str(h["host"]) for h in broken)
        raise ChainBroken(f"the audit table's chain is broken for {names}")


def _say_intact(verdict: dict[str, Any]) -> None:
    files = len(verdict.get("files") or [])
    first, last = verdict.get("first_seq"), verdict.get("last_seq")
    span = f"records {first}-{last}" if first is not None else "no records"
    click.echo(
        f"Audit trail intact: {verdict['records']} records ({span}) "
        f"in {files} file{'s' if files != 1 else ''}."
    )
    if first is not None and first > 1:
        click.echo(f"Records before {first} are no longer kept (rotated away).")
    head = verdict.get("head")
    if head is None:
        click.echo("No head file: a cut at the end of the log cannot be detected.")
    else:
        click.echo(f"The head file names record {head['seq']} as the last written, and it is.")
    _say_sealing(verdict)


def _say_sealing(verdict: dict[str, Any]) -> None:
    """What was checked besides the chain: the seals, or plainly not."""
    sealing = verdict.get("sealing")
    if sealing is None:
        if verdict.get("first_bad") is None:
            click.echo(
                "Checked: the hash chain only. It shows changes made by hand, not a rewrite "
                "of the chain by root; --key-file checks each record's seal as well."
            )
        return
    started = sealing.get("started_seq")
    if started is None:
        return
    click.echo(
        f"Sealing: started at record {started} ({sealing['epoch_seconds']} s epochs); "
        f"{sealing['sealed_records']} sealed records checked, each with its epoch's key"
        + (
            f"; {sealing['unsealed_before']} older records checked by the chain only."
            if sealing["unsealed_before"]
            else "."
        )
    )
    if sealing.get("last_sealed_epoch") is not None:
        click.echo(
            f"Last epoch verified and sealed: {sealing['last_sealed_epoch']} "
            f"(records until {utc_text(sealing['last_sealed_until'])} UTC cannot be rewritten "
            "unseen)."
        )


@audit.command(
    "seal-init",
    epilog="""\b
Examples:
  mfa audit seal-init            start sealing; keep the printed key off this host
  mfa audit seal-init --force    a new sealing (the old key verifies the records before)
""",
)
@click.option(
    "--force",
    is_flag=True,
    help="Start a new sealing even though one is running (a new verification key).",
)
@pass_client
def seal_init(client: DaemonClient, force: bool) -> None:
    """Start sealing the audit trail and print the verification key, once (root only).

    mfad draws a new key, keeps only the current epoch's key (it evolves one way
    at each epoch end, audit.seal_epoch seconds), and from now on seals every
    record with it. The verification key printed here is stored nowhere on this
    host: give it to the security team (the QR code is for a phone or a camera
    off the host). Whoever holds it can verify the trail, and could also forge
    it: keep it as you would a root password, off this machine. Verify with
    `mfa audit verify --key-file FILE` (- reads stdin).
    """
    result = client.request("audit_seal_init", force=force)
    click.echo(result["qr"])
    click.echo(
        "Verification key (shown once; store it off this host):\n\n  "
        f"{safe(result['verification_key'])}\n"
    )
    click.echo(
        f"Sealing from {utc_text(result['seal_start'])} UTC, epochs of "
        f"{safe(result['epoch_seconds'])} s. Check the trail with:\n"
        "  mfa audit verify --key-file -    (then paste the key, and Ctrl-D)"
    )


@audit.command(
    epilog="""\b
Examples:
  mfa audit summary                   the last seven days
  mfa audit summary --since 24h --json
  mfa audit summary --all-hosts       every host of the fleet
""",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=_time_option,
    default="7d",
    show_default=True,
    help="Summarise the records at or after TIME.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--all-hosts",
    is_flag=True,
    help="Summarise every host of the fleet (the shared store's audit table; PostgreSQL).",
)
@pass_client
def summary(client: DaemonClient, since: str, as_json: bool, all_hosts: bool) -> None:
    """What a reviewer looks at first: failures by user and by remote host, locks,
    exemptions and suspensions in force, skipped logins, administrative actions,
    refused requests, users who never enrolled."""
    fleet = {"all_hosts": True} if all_hosts else {}
    result = client.request("audit_summary", since=since, **fleet)
    result.pop("ok", None)
    if as_json:
        click.echo(json_text(result, indent=2))
        return
    result = clean(result)
    click.echo(f"Audit summary since {utc_text(result['since'])} UTC ({result['records']} records)")
    logins = result.get("logins") or {}
    click.echo("Logins: " + (", ".join(f"{k} {n}" for k, n in sorted(logins.items())) or "none"))
    _section(
        "Failures by user (failed logins, wrong codes)",
        [
            f"{r['user']:<20} {r['failures']:>6} {r['wrong_codes']:>6}"
            for r in result["failures_by_user"]
        ],
    )
    _section(
        "Failures by remote host (failed logins, wrong codes)",
        [
            f"{r['rhost']:<20} {r['failures']:>6} {r['wrong_codes']:>6}"
            for r in result["failures_by_rhost"]
        ],
    )
    _section(
        "Failure reasons", [f"{r['reason']:<20} {r['count']:>6}" for r in result["failure_reasons"]]
    )
    _section(
        "Accounts locked",
        [
            f"{utc_text(r.get('time'))}  {r.get('user', '?')} after {r.get('failures', '?')} wrong "
            "codes, " + (f"until {utc_text(r['until'])}" if r.get("until") else "until unlocked")
            for r in result["locks"]
        ],
    )
    _section("Locked now", [", ".join(result["locked_now"])] if result["locked_now"] else [])
    _section(
        "Remote hosts blocked",
        [
            f"{utc_text(r.get('time'))}  {r.get('rhost', '?')} for {r.get('user', '?')}"
            + (f", until {utc_text(r['until'])}" if r.get("until") else "")
            for r in result["source_blocks"]
        ],
    )
    for key, title in (("exempt_now", "Exempt now"), ("suspended_now", "Suspended now")):
        users = result.get(key) or []
        _section(title, [", ".join(users)] if users else [])
    _section(
        "Logins without a second factor (skipped)",
        [f"{r['user']:<20} {r['reason']:<24} {r['count']:>6}" for r in result["skipped"]],
    )
    _section(
        "Administrative actions",
        [
            f"{utc_text(r.get('time'))}  {r.get('actor', '?')}: {r.get('op', '?')} "
            f"{r.get('user', '')}"
            for r in result["control"]
        ],
    )
    _section(
        "Refused control requests",
        [f"{r['actor']:<20} {r['op']:<16} {r['count']:>6}" for r in result["refused"]],
    )
    _section(
        "Users who never enrolled",
        [
            r["user"]
            + (" (enrolment pending)" if r["pending"] else "")
            + (f" ({_count(r['refused_logins'], 'login')} refused)" if r["refused_logins"] else "")
            for r in result["never_enrolled"]
        ],
    )
    _section(
        "Tampering found by mfad at start",
        [f"{utc_text(r.get('time'))}  {r.get('reason', '')}" for r in result["tampered"]],
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _section(title: str, lines: list[str]) -> None:
    click.echo()
    click.echo(f"{title}:" if lines else f"{title}: none")
    for line in lines:
        click.echo(f"  {line}")

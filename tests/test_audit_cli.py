"""`mfa audit` against a real mfad: listing, filters, times, follow, verify, summary, refusal.

The listing and reports run in-process with CliRunner; `--follow` runs the
installed `mfa` in a pseudo-terminal (pexpect) with a timeout, and the
permission test runs it as a throwaway non-root user (runuser), since mfad
authorises by the caller's kernel-reported uid.
"""

from __future__ import annotations

import json
import pwd
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pexpect
import pyotp
import pytest
from click.testing import CliRunner, Result
from conftest import Daemon, totp_now
from wire import PamWire

from mfa_cli.main import cli

MFA = Path(sys.executable).with_name("mfa")


def mfa(mfad: Daemon, *args: str) -> Result:
    """`mfa --socket <the test daemon's control socket> ARGS`, in-process."""
    return CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), *args])


def login(mfad: Daemon, user: str, answers: list[str], rhost: str, service: str = "sshd") -> str:
    with PamWire(mfad.pam_socket) as wire:
        return wire.login(user, answers, service=service, rhost=rhost)[-1].payload


def rows(output: str) -> list[list[str]]:
    """The table's rows, header first, as cells: date, time, event, outcome, user, service,
    rhost, method, reason (no cell but the last holds a space; an empty one shows as "-")."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return [ln.split(None, 8) for ln in lines]


def wrong_codes(secret: str, n: int) -> list[str]:
    """`n` well-formed codes that no step near now (±2, with margin) produces."""
    otp = pyotp.TOTP(secret)
    valid = {otp.at(time.time() + k * 30) for k in range(-3, 4)}
    return [c for c in (f"{d}{d}{d}{d}{d}{d}" for d in "0123456789") if c not in valid][:n]


@pytest.fixture
def traffic(mfad: Daemon, make_user: Callable[..., str]) -> dict[str, str]:
    """Two users, two services, two remote hosts: alice logs in by sshd from .7 (success)
    and by sudo locally (success); bob gives three wrong codes by sshd from .8 (failure).
    (Lockout's back-off delay is off, so wrong codes cost no time.)"""
    mfad.restart(lockout={"delay": 0})
    alice, bob = make_user(), make_user()
    secret = mfad.enroll(alice)
    assert login(mfad, alice, [totp_now(secret)], rhost="203.0.113.7") == "S"
    assert login(mfad, alice, [totp_now(secret, +1)], rhost="", service="sudo") == "S"
    assert login(mfad, bob, wrong_codes(mfad.enroll(bob), 3), rhost="203.0.113.8") == "M"
    return {"alice": alice, "bob": bob}


def test_help_shows_examples_time_forms_and_exit_code_7() -> None:
    """`mfa audit --help` shows examples and the accepted time forms; `mfa --help` and
    `mfa audit verify --help` document exit code 7 for a broken chain."""
    listing = CliRunner().invoke(cli, ["audit", "--help"])
    top = CliRunner().invoke(cli, ["--help"])
    verify = CliRunner().invoke(cli, ["audit", "verify", "--help"])

    assert listing.exit_code == 0
    assert "mfa audit --user alice --since 2h" in listing.output
    assert "30m, 2h, 7d" in listing.output
    assert "7  mfa audit verify: the audit trail was altered" in top.output
    assert "the exit code is 7" in " ".join(verify.output.split())


def test_listing_is_a_table_that_filters_combine_on(mfad: Daemon, traffic: dict[str, str]) -> None:
    """`mfa audit` prints a table (time, event, outcome, user, service, remote host,
    method, reason), oldest first. --user, --event, --outcome, --service and --rhost each narrow
    it, and together they must all match."""
    alice, bob = traffic["alice"], traffic["bob"]

    everything = mfa(mfad, "audit")

    assert everything.exit_code == 0, everything.output
    table = rows(everything.stdout)
    assert table[0] == [
        *("TIME", "(UTC)", "EVENT", "OUTCOME", "USER", "SERVICE", "RHOST", "METHOD", "REASON")
    ]
    assert [r[2] for r in table[1:5]] == ["daemon_start", "daemon_stop", "daemon_start", "control"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", table[1][0])

    mine = rows(mfa(mfad, "audit", "--user", alice, "--event", "login").stdout)[1:]
    assert [(r[3], r[4], r[5], r[6]) for r in mine] == [
        ("success", alice, "sshd", "203.0.113.7"),
        ("success", alice, "sudo", "-"),
    ]
    assert [(r[7], r[8]) for r in mine] == [("totp", "correct_code")] * 2

    refused = rows(mfa(mfad, "audit", "--event", "login", "--outcome", "failure").stdout)[1:]
    assert [(r[4], r[8]) for r in refused] == [(bob, "too_many_attempts")]

    by_host = rows(mfa(mfad, "audit", "--rhost", "203.0.113.7").stdout)[1:]
    assert {r[2] for r in by_host} == {"challenge", "login"}
    assert {r[4] for r in by_host} == {alice}
    by_service = rows(mfa(mfad, "audit", "--service", "sudo", "--event", "login").stdout)[1:]
    assert [r[4] for r in by_service] == [alice]

    nothing = mfa(mfad, "audit", "--user", bob, "--event", "login", "--outcome", "success")
    assert nothing.exit_code == 0
    assert nothing.stdout == ""
    assert "No matching records." in nothing.stderr


def test_json_lines_are_the_logged_records(mfad: Daemon, traffic: dict[str, str]) -> None:
    """`mfa audit --json` prints one JSON object per line, byte for byte the line in the
    log, hash-chain fields included, so its output can be checked against the log."""
    result = mfa(mfad, "audit", "--json", "--user", traffic["alice"])

    assert result.exit_code == 0
    logged = set(mfad.audit_path.read_text().splitlines())
    printed = result.stdout.splitlines()
    assert printed
    assert all(line in logged for line in printed)
    assert all(json.loads(line)["user"] == traffic["alice"] for line in printed)


def test_since_and_until_take_durations_and_times(mfad: Daemon, traffic: dict[str, str]) -> None:
    """--since/--until accept a duration back from now (2h), an RFC 3339 time, or a local
    `YYYY-MM-DD HH:MM`. --since keeps records at or after the time, --until those
    before it. Anything else is a usage error (exit 2) that names the accepted forms."""
    logins = [
        json.loads(line)
        for line in mfa(mfad, "audit", "--json", "--event", "login").stdout.splitlines()
    ]
    second = logins[1]["time"]

    assert len(_json(mfa(mfad, "audit", "--json", "--event", "login", "--since", "2h"))) == 3
    assert _json(mfa(mfad, "audit", "--json", "--until", "2h")) == []
    from_second = _json(mfa(mfad, "audit", "--json", "--event", "login", "--since", second))
    assert [r["time"] for r in from_second] == [r["time"] for r in logins[1:]]
    before_second = _json(mfa(mfad, "audit", "--json", "--event", "login", "--until", second))
    assert [r["time"] for r in before_second] == [logins[0]["time"]]

    local_next_minute = (datetime.now() + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M")
    assert len(_json(mfa(mfad, "audit", "--json", "--until", local_next_minute))) > 3
    assert _json(mfa(mfad, "audit", "--json", "--since", local_next_minute)) == []

    bad = mfa(mfad, "audit", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "neither a duration (30m, 2h, 7d) nor a time" in bad.stderr


def _json(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_limit_shows_the_most_recent_and_says_how_many_matched(
    mfad: Daemon, traffic: dict[str, str]
) -> None:
    """--limit N shows the N most recent matching records and says on stderr how many
    matched in all; --limit 0 shows every one."""
    every = _json(mfa(mfad, "audit", "--json", "--limit", "0"))

    last_two = mfa(mfad, "audit", "--json", "--limit", "2")

    assert _json(last_two) == every[-2:]
    assert f"the last 2 of {len(every)} matching records" in last_two.stderr
    assert len(every) == len(mfad.audit())


def test_verify_exit_0_when_intact_and_7_naming_the_bad_record(
    mfad: Daemon, traffic: dict[str, str]
) -> None:
    """`mfa audit verify` says the trail is intact (exit 0). After a record is edited while
    mfad is stopped it exits 7 and shows where (file, line, record), why, and the record
    as found; --json gives the daemon's verdict with the same exit code."""
    intact = mfa(mfad, "audit", "verify")
    assert intact.exit_code == 0, intact.output
    assert re.match(r"Audit trail intact: \d+ records \(records 1-\d+\) in 1 file\.", intact.stdout)

    mfad.stop()
    lines = mfad.audit_path.read_text().splitlines(keepends=True)
    i = next(n for n, ln in enumerate(lines) if '"reason":"too_many_attempts"' in ln)
    lines[i] = lines[i].replace('"outcome":"failure"', '"outcome":"success"')
    mfad.audit_path.write_text("".join(lines))
    mfad.start()

    broken = mfa(mfad, "audit", "verify")

    assert broken.exit_code == 7
    seq = json.loads(lines[i])["seq"]
    assert "Audit trail BROKEN: edited" in broken.stdout
    assert f"{mfad.audit_path} line {i + 1} (record {seq})" in broken.stdout
    assert lines[i].strip() in broken.stdout
    assert f"the audit trail is broken at record {seq} (edited)" in broken.stderr
    as_json = mfa(mfad, "audit", "verify", "--json")
    assert as_json.exit_code == 7
    assert json.loads(as_json.stdout)["first_bad"]["seq"] == seq


def test_summary_shows_what_a_reviewer_looks_at_first(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """`mfa audit summary --since 1h` counts failures by user and by remote host, lists
    the account lock that wrong codes set (and that it is in force), the administrative
    actions with their actor, refused requests, and the user who never enrolled (an
    enrolment started and left pending)."""
    mfad.restart(lockout={"deny": 2, "source_deny": 100, "delay": 0})
    alice, pending = make_user(), make_user()
    secret = mfad.enroll(alice)
    assert mfad.request("enroll_begin", user=pending)["ok"]
    for code in wrong_codes(secret, 2):
        assert login(mfad, alice, [code], rhost="198.51.100.66") != "S"
    mfad.request("status")  # refused: no user named

    result = mfa(mfad, "audit", "summary", "--since", "1h")

    assert result.exit_code == 0, result.output
    text = result.stdout
    section = _sections(text)
    assert re.search(rf"^  {alice}\s+\d+\s+[12]$", section["Failures by user"], re.M)
    assert re.search(r"^  198\.51\.100\.66\s+\d+\s+[12]$", section["Failures by remote host"], re.M)
    assert alice in section["Accounts locked"]
    assert section["Locked now"].strip() == alice
    assert f"root: enroll_begin {pending}" in section["Administrative actions"]
    assert re.search(r"root\s+status\s+1", section["Refused control requests"])
    assert f"{pending} (enrolment pending)" in section["Users who never enrolled"]

    as_json = json.loads(mfa(mfad, "audit", "summary", "--json").stdout)
    assert as_json["locked_now"] == [alice]
    assert [u["user"] for u in as_json["never_enrolled"]] == [pending]


def _sections(text: str) -> dict[str, str]:
    """The summary's sections by title: "Title:" lines followed by indented lines."""
    out: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and ":" in line:
            title, rest = line.split(":", 1)
            title = title.split(" (")[0]  # "Failures by user (failed logins, wrong codes)"
            out[title] = rest.strip() + "\n"
        elif line.startswith("  ") and title:
            out[title] += line + "\n"
    return out


def test_follow_shows_a_login_made_after_it_started(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """`mfa audit --follow --user U`, running as a separate process, first shows U's
    recent records, then a login made after it started, as it happens; Ctrl-C ends it
    with exit code 0."""
    user = make_user()
    secret = mfad.enroll(user)
    child = pexpect.spawn(
        str(MFA),
        ["--socket", str(mfad.control_socket), "audit", "--follow", "--user", user],
        encoding="utf-8",
        timeout=15,
    )
    try:
        child.expect(rf"control\s+success\s+{user}(\s+-){{3}}\s+enroll_confirm by root")
        child.expect("following new records; Ctrl-C to stop")

        assert login(mfad, user, [totp_now(secret)], rhost="203.0.113.9") == "S"

        child.expect(rf"login\s+success\s+{user}\s+sshd\s+203\.0\.113\.9\s+totp\s+correct_code")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_a_non_admin_is_refused_the_audit_trail_and_the_refusal_is_audited(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A user who is neither root nor in the admin group gets exit code 4 from `mfa audit`,
    `mfa audit verify` and `mfa audit summary`, sees no record, and each refusal is in the
    audit trail with the caller's name and uid. Made a member of the admin group, the same
    user may read it."""
    mallory = make_user()
    for args, op in (
        (["audit"], "audit_query"),
        (["audit", "--follow"], "audit_follow"),
        (["audit", "verify"], "audit_verify"),
        (["audit", "summary"], "audit_summary"),
    ):
        refused = mfad.mfa_as(mallory, *args)

        assert refused.returncode == 4, refused.stderr
        assert refused.stderr == "Error: only an administrator may read the audit trail\n"
        assert refused.stdout == ""
        record = mfad.audit()[-1]
        assert (record["event"], record["outcome"], record["op"]) == ("control", "refused", op)
        assert (record["actor"], record["actor_uid"]) == (mallory, _uid(mallory))

    mfad.restart(admin_group=mallory)
    allowed = mfad.mfa_as(mallory, "audit", "--event", "control", "--outcome", "refused")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.count(mallory) == 4


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def test_a_stopped_daemon_ends_a_follow_with_exit_3(mfad: Daemon) -> None:
    """When mfad stops under `mfa audit --follow`, the follow ends at once (it does not
    hold up the daemon's shutdown) and exits 3, saying the daemon closed the connection."""
    child = pexpect.spawn(
        str(MFA),
        ["--socket", str(mfad.control_socket), "audit", "--follow"],
        encoding="utf-8",
        timeout=15,
    )
    try:
        child.expect("following new records")
        began = time.monotonic()
        mfad.stop()
        stopped_in = time.monotonic() - began
        child.expect(pexpect.EOF)
        child.close()
    finally:
        if child.isalive():
            child.terminate(force=True)

    assert stopped_in < 3
    assert child.exitstatus == 3
    assert "mfad closed the connection (it stopped or restarted)" in (child.before or "")


def test_times_are_sent_to_mfad_in_utc(mfad: Daemon) -> None:
    """An absolute time with an offset is converted to UTC before it is sent: records
    written now are found from one minute ago given in a +05:00 zone."""
    minute_ago = (datetime.now(UTC) - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=5)))
    result = mfa(mfad, "audit", "--json", "--since", minute_ago.isoformat())

    assert [r["event"] for r in _json(result)] == ["daemon_start"]


def test_listing_columns_stay_in_line_whatever_the_lengths(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Every column of `mfa audit` starts where its header does, on every line: long event
    names (recovery_code_used) fit their column, and a remote host longer than its column is
    cut with an ellipsis instead of pushing the rest of the line aside (--full shows it
    whole). The METHOD column
    says how a login succeeded (totp, recovery)."""
    user = make_user()
    secret = mfad.enroll(user)
    codes = mfad.request("recovery_codes", user=user, regenerate=True)["codes"]
    long_host = "a-rather-long-host-name.example.com"
    assert login(mfad, user, [codes[0]], rhost=long_host) == "S"
    assert login(mfad, user, [totp_now(secret)], rhost="192.0.2.1") == "S"

    lines = mfa(mfad, "audit", "--user", user).stdout.splitlines()

    header = lines[0]
    starts = [header.index(name) for name in ("EVENT", "OUTCOME", "USER", "RHOST", "METHOD")]
    for line in lines[1:]:
        assert all(line[at - 1] == " " and line[at] != " " for at in starts), (header, line)
    used = next(line for line in lines if "recovery_code_used" in line)
    assert long_host not in used and " a-rather-long-host-\u2026 " in used
    assert long_host in mfa(mfad, "audit", "--full", "--user", user).stdout
    logins = [line for line in lines if line.split()[2] == "login"]
    assert [line[starts[4] :].split()[0] for line in logins] == ["recovery", "totp"]

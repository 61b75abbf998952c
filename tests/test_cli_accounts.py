"""`mfa` account administration against a real mfad: lifecycle changes, unlock, list, show,
token parameters and recovery codes; self-service and its limits as a real non-root user.

Commands run in-process with CliRunner as root, or as the installed `mfa` script under
`runuser` when the caller's uid matters (mfad authorises by SO_PEERCRED). Logins that
set up history and locks go through the real libpam and pam_mfa.so (`pam_login`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pexpect
import pyotp
import pytest
from click.testing import CliRunner, Result
from conftest import Daemon, totp_from_uri, totp_now

from mfa_cli.main import cli

MFA = Path(sys.executable).with_name("mfa")
RECOVERY_CODE = re.compile(r"^  ([2-9A-Z]{5}-[2-9A-Z]{5}-[2-9A-Z]{5})$", re.MULTILINE)
STORE_LINE = "Store these safely, they are not shown again."
LOCKOUT = {"deny": 2, "source_deny": 100, "unlock_time": 0}
"""Two wrong codes lock until an administrator unlocks; one source is never blocked first."""
LOCKOUT_1H = {**LOCKOUT, "unlock_time": 3600}

MakeUser = Callable[..., str]


def mfa(mfad: Daemon, *args: str, input: str | None = None) -> Result:
    """`mfa --socket <the test daemon's control socket> ARGS`, in-process, as root."""
    return CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), *args], input=input)


def mfa_as_with_input(
    mfad: Daemon, user: str, stdin: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The installed `mfa` as ``user`` (like Daemon.mfa_as), ``stdin`` on its standard input."""
    return subprocess.run(
        ["runuser", "-u", user, "--", str(MFA), "--socket", str(mfad.control_socket), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def spawn_as(user: str, mfad: Daemon, *args: str) -> pexpect.spawn:
    """The installed `mfa` as ``user`` in a pseudo-terminal, for its prompts."""
    return pexpect.spawn(
        "runuser",
        ["-u", user, "--", str(MFA), "--socket", str(mfad.control_socket), *args],
        encoding="utf-8",
        timeout=20,
        dimensions=(60, 100),
    )


def state_of(mfad: Daemon, user: str) -> str:
    return str(mfad.request("status", user=user)["state"])


def listed(mfad: Daemon, *args: str) -> list[dict[str, Any]]:
    result = mfa(mfad, "list", "--json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def wrong_code(secret: str) -> str:
    """A well-formed code that no step near now (±2) produces."""
    otp = pyotp.TOTP(secret)
    valid = {otp.at(time.time() + k * 30) for k in range(-2, 3)}
    return next(c for c in ("000000", "123456", "999999", "424242") if c not in valid)


def lock(pam_login: Any, user: str, secret: str) -> None:
    """Two wrong codes through libpam: with LOCKOUT in force the account is locked."""
    pam_login(user, [wrong_code(secret)] * 2)


def test_non_root_user_enrols_itself_and_is_refused_on_others(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A non-root user runs `mfa enroll` on themselves: the QR code's key gives the code that
    activates the token, and the recovery codes are shown once with the warning to keep
    them. The same user asking `mfa status`, `mfa enroll` or `mfa suspend` about someone
    else, or `mfa list`, exits 4, nothing about the other user changes, and each refusal
    is in the audit log with the user as actor."""
    alice, bob = make_user(), make_user()

    child = spawn_as(alice, mfad, "enroll")
    child.expect("Verification code: ")
    uri = re.search(r"URI:\s+(otpauth://\S+)", child.before)
    assert uri, child.before
    otp = totp_from_uri(uri.group(1))
    assert f":{alice}?" in uri.group(1)
    child.sendline(otp.now())
    child.expect(f"Enrolment of {alice} is active.")
    child.expect(STORE_LINE)
    shown = child.before.replace("\r\n", "\n")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0
    assert len(set(RECOVERY_CODE.findall(shown))) == 10
    assert state_of(mfad, alice) == "active"
    assert mfad.request("recovery_codes", user=alice)["remaining"] == 10

    for args in (["status", bob], ["enroll", bob], ["suspend", bob], ["list"]):
        refused = mfad.mfa_as(alice, *args)

        assert refused.returncode == 4, (args, refused.stderr)
        assert refused.stderr.startswith("Error: "), refused.stderr
        assert "otpauth://" not in refused.stdout
    assert state_of(mfad, bob) == "none"

    refusals = [
        r
        for r in mfad.audit()
        if (r["event"], r["outcome"], r.get("actor")) == ("control", "refused", alice)
    ]
    assert [r["op"] for r in refusals] == ["status", "enroll_begin", "suspend", "list"]
    assert all(r["actor_uid"] > 0 for r in refusals)
    assert bob in refusals[0]["message"] and bob in refusals[1]["message"]


def test_user_regenerates_own_recovery_codes_only_with_a_current_code(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """A non-root user regenerating their own recovery codes is asked for a current code
    (hidden input); a wrong one exits 6 and the old codes still work; a right one (on
    stdin, as a script gives it) prints a new set, after which an old code no longer
    logs in and a new one does. Root regenerates anyone's codes without a code."""
    user = make_user()
    secret = mfad.enroll(user)
    old = mfad.request("recovery_codes", user=user, regenerate=True)["codes"]

    child = spawn_as(user, mfad, "recovery-codes", "--regenerate")
    child.expect("Current verification code: ")
    child.sendline(wrong_code(secret))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 6
    assert wrong_code(secret) not in child.before

    mine = mfa_as_with_input(
        mfad, user, f"{totp_now(secret, +1)}\n", "recovery-codes", "--regenerate"
    )

    assert mine.returncode == 0, mine.stderr
    new = RECOVERY_CODE.findall(mine.stdout)
    assert len(set(new)) == 10 and not set(new) & set(old)
    assert mine.stdout.rstrip().endswith(STORE_LINE)
    assert pam_login(user, [old[0]] * 3).name == "PAM_MAXTRIES"
    assert pam_login(user, [new[0]]).name == "PAM_SUCCESS"

    left = mfad.mfa_as(user, "recovery-codes")
    assert left.stdout == f"{user} has 9 recovery codes left.\n"

    by_root = mfa(mfad, "recovery-codes", user, "--regenerate")

    assert by_root.exit_code == 0, by_root.output
    assert by_root.stdout.startswith(f"New recovery codes for {user} (the old ones no longer")
    assert len(set(RECOVERY_CODE.findall(by_root.stdout)) - set(new)) == 10
    assert mfa(mfad, "recovery-codes", user).stdout == f"{user} has 10 recovery codes left.\n"


def test_list_json_and_csv_show_every_state(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """`mfa list --json` has one row per configured user with the state the test set
    (active, pending, suspended, exempt with reason and expiry, disabled) and a locked
    user's lock and failure count; the active user's last login and its remote host; no
    row for a user never configured. `--csv` parses with the csv module to the same rows,
    and the default table shows a header and one aligned line per user."""
    mfad.restart(lockout=LOCKOUT_1H)
    active, pending, suspended, exempt, disabled, locked, never = (make_user() for _ in range(7))
    secret = mfad.enroll(active)
    mfad.enroll(suspended)
    mfad.enroll(disabled)
    locked_secret = mfad.enroll(locked)
    for args in (
        ["require", pending],
        ["suspend", suspended],
        ["exempt", exempt, "--reason", "backup service account", "--until", "7d"],
        ["disable", "--yes", disabled],
    ):
        assert mfa(mfad, *args).exit_code == 0, args
    assert pam_login(active, [totp_now(secret)], rhost="198.51.100.4").name == "PAM_SUCCESS"
    lock(pam_login, locked, locked_secret)

    rows = {r["user"]: r for r in listed(mfad)}

    assert set(rows) == {active, pending, suspended, exempt, disabled, locked}
    assert never not in rows
    assert {u: r["state"] for u, r in rows.items()} == {
        active: "active",
        pending: "pending",
        suspended: "suspended",
        exempt: "exempt",
        disabled: "disabled",
        locked: "active",
    }
    assert rows[active]["method"] == "totp" and rows[active]["enrolled_at"]
    assert rows[active]["last_rhost"] == "198.51.100.4" and rows[active]["last_verified_at"]
    assert rows[suspended]["method"] == "totp"  # suspend keeps the token
    assert rows[disabled]["method"] is None  # disable erases it
    assert rows[pending]["enrol_by"] is not None
    assert rows[exempt]["exempt_reason"] == "backup service account"
    expiry = datetime.fromisoformat(rows[exempt]["exempt_until"])
    assert abs(expiry - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=1)
    lifted = datetime.fromisoformat(rows[locked]["locked_until"])
    assert abs(lifted - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(minutes=1)
    assert rows[locked]["failed_attempts"] == 2
    for user in (active, pending, suspended, exempt, disabled):
        assert (rows[user]["locked_until"], rows[user]["failed_attempts"]) == (None, 0)

    as_csv = mfa(mfad, "list", "--csv")
    assert as_csv.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["user"] for r in parsed] == sorted(rows)
    for row in parsed:
        for key, value in rows[row["user"]].items():
            if key in row and key != "source_blocks":  # "SOURCE until TIME; ...": none here
                assert row[key] == ("" if value is None else str(value)), (key, row)
        assert row["source_blocks"] == ""

    table = mfa(mfad, "list").stdout.splitlines()
    assert table[0].split()[:3] == ["USER", "STATE", "METHOD"]
    assert len(table) == 1 + len(rows)
    lines = {line.split()[0]: line for line in table[1:]}
    assert lines[locked].split()[1] == "active"
    assert lifted.strftime("%Y-%m-%d %H:%M:%S") in lines[locked]
    assert lines[exempt].endswith("backup service account")
    assert table[0].index("STATE") == lines[active].index("active")  # aligned columns


def test_list_shows_a_lock_only_an_administrator_lifts(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """With unlock_time 0 a locked user's row says the lock lasts until an administrator
    unlocks it: `until unlocked` in the JSON, `admin unlock` in the table."""
    mfad.restart(lockout=LOCKOUT)
    user = make_user()
    lock(pam_login, user, mfad.enroll(user))

    rows = listed(mfad)

    assert [(r["user"], r["locked_until"]) for r in rows] == [(user, "until unlocked")]
    assert "admin unlock" in mfa(mfad, "list").stdout


def test_list_sorts_and_filters(mfad: Daemon, make_user: MakeUser, make_group: Any) -> None:
    """`mfa list` sorts by any column (--sort, --reverse; accounts without a value come
    last either way) and filters by state and by group; a filter nobody matches says so
    on stderr; an unknown group exits 5."""
    a, b, c, d = (make_user() for _ in range(4))
    group = make_group(b, d)
    mfad.enroll(a)
    mfad.enroll(b)
    assert mfa(mfad, "require", c, d).exit_code == 0
    assert mfa(mfad, "suspend", b).exit_code == 0

    by_user = [r["user"] for r in listed(mfad)]
    assert by_user == sorted([a, b, c, d])
    assert [r["user"] for r in listed(mfad, "--reverse")] == sorted([a, b, c, d], reverse=True)
    by_state = [r["state"] for r in listed(mfad, "--sort", "state")]
    assert by_state == ["active", "pending", "pending", "suspended"]
    assert [r["state"] for r in listed(mfad, "--sort", "state", "--reverse")] == by_state[::-1]
    enrolled = [r["user"] for r in listed(mfad, "--sort", "enrolled_at", "--reverse")]
    assert set(enrolled[:2]) == {a, b} and set(enrolled[2:]) == {c, d}

    assert [r["user"] for r in listed(mfad, "--state", "pending")] == sorted([c, d])
    assert [r["user"] for r in listed(mfad, "--group", group)] == sorted([b, d])
    assert [r["user"] for r in listed(mfad, "--group", group, "--state", "suspended")] == [b]
    nobody = mfa(mfad, "list", "--state", "exempt")
    assert (nobody.exit_code, nobody.stdout, nobody.stderr) == (0, "", "No accounts match.\n")
    assert mfa(mfad, "list", "--group", "no-such-group-mfa").exit_code == 5
    assert mfa(mfad, "list", "--sort", "password").exit_code == 2


# action, how to prepare the user, the line it prints, the state after, the refusal's reason
LIFECYCLE = [
    ("require", "none", "none -> pending", "pending", "is already required to enrol"),
    ("suspend", "active", "active -> suspended", "suspended", "is already suspended"),
    ("resume", "suspended", "suspended -> active", "active", "is not suspended"),
    (
        "disable",
        "active",
        "active -> disabled (secret and recovery codes erased, history kept)",
        "disabled",
        "is disabled",
    ),
    ("exempt", "active", "active -> exempt (on leave; no expiry)", "exempt", "is exempt"),
    ("unexempt", "exempt", "exempt -> active", "active", "is active"),
]


@pytest.mark.parametrize(
    ("action", "start", "line", "end", "why"), LIFECYCLE, ids=[row[0] for row in LIFECYCLE]
)
def test_lifecycle_command_changes_then_refuses(
    mfad: Daemon, make_user: MakeUser, action: str, start: str, line: str, end: str, why: str
) -> None:
    """Each state change prints `user: before -> after`, exits 0 and is audited with root
    as actor; the same command again does not fit the new state: it prints the reason on
    stderr, nothing on stdout, exits 8 and is audited as refused."""
    user = make_user()
    if start != "none":
        mfad.enroll(user)
    if start == "suspended":
        mfad.request("suspend", user=user)
    if start == "exempt":
        mfad.request("exempt", user=user, reason="on leave")
    extra = ["--reason", "on leave"] if action == "exempt" else []

    done = mfa(mfad, action, user, *extra, "--yes")

    assert done.exit_code == 0, done.output
    assert done.stdout == f"{user}: {line}\n"
    assert state_of(mfad, user) == end
    record = mfad.audit()[-1]
    assert (record["op"], record["outcome"], record["actor"], record["user"]) == (
        action,
        "success",
        "root",
        user,
    )

    again = mfa(mfad, action, user, *extra, "--yes")

    assert again.exit_code == 8
    assert again.stdout == ""
    assert f"{user}: refused: " in again.stderr and why in again.stderr
    assert again.stderr.rstrip().endswith("Error: not changed (see above)")
    assert state_of(mfad, user) == end
    assert (mfad.audit()[-1]["op"], mfad.audit()[-1]["outcome"]) == (action, "refused")


def test_reset_and_mixed_outcomes(mfad: Daemon, make_user: MakeUser) -> None:
    """`mfa reset USER` sends an active user back to pending with the token gone. Naming
    several users changes those it can and refuses the rest: changes on stdout, reasons on
    stderr, exit 8; a user that does not exist makes it exit 5. Nobody named is a usage
    error."""
    a, b, c = make_user(), make_user(), make_user()
    mfad.enroll(a)
    mfad.enroll(b)

    reset = mfa(mfad, "reset", a)

    assert reset.exit_code == 0, reset.output
    assert (
        reset.stdout == f"{a}: active -> pending (token and recovery codes erased; must "
        "enrol again)\n"
    )
    assert mfad.request("status", user=a)["method"] is None

    mixed = mfa(mfad, "suspend", a, b, c)

    assert mixed.exit_code == 8
    assert mixed.stdout == f"{a}: pending -> suspended\n{b}: active -> suspended\n"
    assert f"{c}: refused: cannot suspend {c}: {c} is none" in mixed.stderr
    assert "Error: 1 of 3 users not changed" in mixed.stderr

    unknown = mfa(mfad, "resume", a, "no-such-user-mfa")

    assert unknown.exit_code == 5
    assert unknown.stdout == f"{a}: suspended -> pending\n"
    assert "no-such-user-mfa: refused: there is no user" in unknown.stderr
    assert mfa(mfad, "resume").exit_code == 2


def test_reset_all_asks_first(mfad: Daemon, make_user: MakeUser) -> None:
    """`mfa reset --all` asks before erasing every token; "n" aborts and changes nothing,
    "y" resets every account mfad knows, and --yes does not ask."""
    a, b = make_user(), make_user()
    mfad.enroll(a)
    mfad.enroll(b)

    declined = mfa(mfad, "reset", "--all", input="n\n")

    assert declined.exit_code == 1
    assert "Reset every account mfad knows" in declined.stdout
    assert "Aborted" in declined.stderr
    assert (state_of(mfad, a), state_of(mfad, b)) == ("active", "active")

    accepted = mfa(mfad, "reset", "--all", input="y\n")

    assert accepted.exit_code == 0, accepted.output
    assert f"{a}: active -> pending" in accepted.stdout
    assert f"{b}: active -> pending" in accepted.stdout
    assert (state_of(mfad, a), state_of(mfad, b)) == ("pending", "pending")

    unasked = mfa(mfad, "reset", "--all", "--yes")
    assert unasked.exit_code == 0
    assert "?" not in unasked.stdout
    assert mfa(mfad, "reset", "--all", a).exit_code == 2


def test_group_targeting(mfad: Daemon, make_user: MakeUser, make_group: Any) -> None:
    """`--group` reaches every member of an NSS group and nobody else, alone or with named
    users; an unknown group exits 5 and changes nothing."""
    a, b, outsider = make_user(), make_user(), make_user()
    group = make_group(a, b)

    required = mfa(mfad, "require", "--group", group)

    assert required.exit_code == 0, required.output
    assert sorted(required.stdout.splitlines()) == sorted(
        [f"{a}: none -> pending", f"{b}: none -> pending"]
    )
    assert state_of(mfad, outsider) == "none"

    exempted = mfa(
        mfad,
        "exempt",
        outsider,
        "--group",
        group,
        "--reason",
        "pilot",
        "--until",
        "2099-01-01T00:00:00Z",
    )

    assert exempted.exit_code == 0, exempted.output
    assert len(exempted.stdout.splitlines()) == 3
    assert f"{outsider}: none -> exempt (pilot; until 2099-01-01 00:00:00 UTC)" in exempted.stdout
    rows = {r["user"]: r for r in listed(mfad)}
    assert {rows[u]["exempt_until"] for u in (a, b, outsider)} == {"2099-01-01T00:00:00+00:00"}

    missing = mfa(mfad, "unexempt", "--group", "no-such-group-mfa")
    assert missing.exit_code == 5
    assert state_of(mfad, a) == "exempt"


def test_exempt_checks_reason_and_expiry_before_asking(mfad: Daemon, make_user: MakeUser) -> None:
    """`mfa exempt` without --reason, or with an expiry in the past or unreadable, is a
    usage error (exit 2) and changes nothing."""
    user = make_user()
    for args in (
        [],
        ["--reason", "x", "--until", "2001-01-01"],
        ["--reason", "x", "--until", "next tuesday"],
    ):
        result = mfa(mfad, "exempt", user, *args)

        assert result.exit_code == 2, result.output
    assert state_of(mfad, user) == "none"


def test_unlock_lifts_a_lock(mfad: Daemon, make_user: MakeUser, pam_login: Any) -> None:
    """A user locked by wrong codes cannot log in even with the right code, and `mfa status`
    says the lock lasts until an administrator lifts it; `mfa unlock` says who it unlocked
    (and who was not locked), is audited, and the right code then logs in."""
    mfad.restart(lockout=LOCKOUT)
    user, other = make_user(), make_user()
    secret = mfad.enroll(user)
    lock(pam_login, user, secret)
    assert pam_login(user, [totp_now(secret)]).name != "PAM_SUCCESS"
    locked = mfa(mfad, "status", user).stdout
    assert re.search(r"^Failed attempts:\s+2$", locked, re.MULTILINE)
    assert re.search(r"^Locked:\s+until an administrator unlocks it$", locked, re.MULTILINE)

    result = mfa(mfad, "unlock", user, other)

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{user}: unlocked: account lock (until an administrator unlocked it) lifted\n"
        f"{other}: was not locked or blocked\n"
    )
    assert any(
        (r["event"], r.get("op"), r.get("user")) == ("control", "unlock", user)
        for r in mfad.audit()
    )
    assert re.search(r"^Locked:\s+-$", mfa(mfad, "status", user).stdout, re.MULTILINE)
    assert pam_login(user, [totp_now(secret, +1)]).name == "PAM_SUCCESS"


def test_show_lists_second_factor_logins_newest_first(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """`mfa show USER` prints what `mfa status` prints, then each successful second-factor
    login with its time, service, remote host and method, newest first: a recovery-code
    login from one host after a code login from another."""
    user = make_user()
    secret = mfad.enroll(user)
    codes = mfad.request("recovery_codes", user=user, regenerate=True)["codes"]
    assert pam_login(user, [totp_now(secret)], rhost="192.0.2.10").name == "PAM_SUCCESS"
    assert pam_login(user, [codes[0]], service="sudo", rhost="192.0.2.20").name == "PAM_SUCCESS"

    shown = mfa(mfad, "show", user)

    assert shown.exit_code == 0, shown.output
    status = mfa(mfad, "status", user).stdout
    assert shown.stdout.startswith(status)
    history = shown.stdout[len(status) :].splitlines()
    assert history[:3] == [
        "",
        "Second-factor logins, newest first:",
        "  TIME (UTC)           SERVICE  REMOTE HOST  METHOD",
    ]
    assert [line.split()[2:] for line in history[3:]] == [
        ["sudo", "192.0.2.20", "recovery"],
        ["sshd", "192.0.2.10", "totp"],
    ]
    assert "Recovery codes:   9 left" in status
    as_json = json.loads(mfa(mfad, "show", user, "--json").stdout)
    assert [h["method"] for h in as_json["history"]] == ["recovery", "totp"]


def test_enroll_with_token_parameters(mfad: Daemon, make_user: MakeUser, pam_login: Any) -> None:
    """`mfa enroll --digits 8 --algorithm SHA256 --period 60` shows a URI that carries those
    parameters; a code computed from it activates the token, `mfa status` shows them, and
    an 8-digit code logs in."""
    user = make_user()

    begun = mfa(
        mfad, "enroll", user, "--digits", "8", "--algorithm", "sha256", "--period", "60", input=""
    )

    assert "time-based, SHA256, 8 digits, every 60 s" in begun.stdout
    uri = re.search(r"URI:\s+(otpauth://\S+)", begun.stdout)
    assert uri, begun.stdout
    otp = totp_from_uri(uri.group(1))
    assert (otp.digits, otp.interval, otp.digest().name) == (8, 60, "sha256")
    confirmed = mfa(mfad, "enroll", user, "--confirm", input=f"{otp.at(time.time() - 60)}\n")

    assert confirmed.exit_code == 0, confirmed.output
    assert len(RECOVERY_CODE.findall(confirmed.stdout)) == 10
    # confirmed with the code before the current one: the current one logs in (below)
    assert "the code the app shows now is a later one and logs in." in confirmed.stdout
    assert (
        "Token:            totp, SHA256, 8 digits, every 60 s" in mfa(mfad, "status", user).stdout
    )
    assert pam_login(user, [otp.now()]).name == "PAM_SUCCESS"


def test_forget_names_its_users_and_asks_before_asking_mfad(tmp_path: Path) -> None:
    """`mfa forget` needs at least one USER (usage error, exit 2) and takes no --group or
    --all. It asks before anything is sent: answering no exits 1 and mfad is not even
    contacted (here there is none); --yes goes straight to mfad (none: exit 3). Its help
    shows an example."""
    nowhere = str(tmp_path / "no-mfad.sock")

    assert CliRunner().invoke(cli, ["--socket", nowhere, "forget"]).exit_code == 2
    assert CliRunner().invoke(cli, ["--socket", nowhere, "forget", "--all"]).exit_code == 2

    declined = CliRunner().invoke(cli, ["--socket", nowhere, "forget", "alice", "bob"], input="n\n")

    assert declined.exit_code == 1, declined.output
    assert declined.stdout.startswith("Forget alice, bob: erase their tokens, recovery codes")
    assert "mfad is not running" not in declined.output

    unasked = CliRunner().invoke(cli, ["--socket", nowhere, "forget", "--yes", "alice"])

    assert unasked.exit_code == 3, unasked.output
    assert "Forget" not in unasked.output
    assert re.search(
        r"Example:\n\s+mfa forget alice", CliRunner().invoke(cli, ["forget", "--help"]).output
    )


def test_a_user_enrolling_again_is_told_to_ask_an_administrator(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """`mfa enroll` on one's own enrolled account points to an administrator, not to
    `mfa reset`, which only an administrator may run."""
    user = make_user()
    mfad.enroll(user)
    out = mfad.mfa_as(user, "enroll")
    assert out.returncode != 0
    assert "ask an administrator to reset it" in out.stderr
    assert "mfa reset" not in out.stderr


def test_list_sorts_by_the_column_names_the_table_shows(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """`mfa list --sort` takes a column as the table heads it (FAILED, "LAST RHOST",
    in any case, words joined by a space or '-') as well as mfad's field name; an unknown
    column is a usage error that lists the columns."""
    a, b = make_user(), make_user()
    secret_a, secret_b = mfad.enroll(a), mfad.enroll(b)
    assert pam_login(b, [wrong_code(secret_b)]).name != "PAM_SUCCESS"
    assert pam_login(a, [totp_now(secret_a)]).name == "PAM_SUCCESS"
    header = mfa(mfad, "list").stdout.splitlines()[0]
    assert "FAILED" in header and "LAST RHOST" in header

    for column in ("failed", "FAILED", "failed_attempts"):
        assert [r["user"] for r in listed(mfad, "--sort", column, "--reverse")] == [b, a]
    for column in ("LAST RHOST", "last-rhost", "Last Rhost", "ENROLLED (UTC)"):
        assert len(listed(mfad, "--sort", column)) == 2
    assert [r["user"] for r in listed(mfad, "--sort", "last rhost", "--reverse")] == [a, b]
    unknown = mfa(mfad, "list", "--sort", "password")
    assert unknown.exit_code == 2
    assert "last-verified" in unknown.output and "failed" in unknown.output


def test_host_blocks_are_shown_and_unlock_says_it_lifted_them(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """A remote host blocked for a user after wrong codes (the account itself not locked)
    shows in `mfa status`, `mfa show` and `mfa list` (which host, until when; the JSON and
    CSV too). `mfa unlock` lifts it and says so, by host, and the audit's lock_cleared
    names it; then the status shows no block and the right code from that host logs in."""
    mfad.restart(lockout={"deny": 100, "source_deny": 2, "source_block_time": 600})
    user = make_user()
    secret = mfad.enroll(user)
    assert pam_login(user, [wrong_code(secret)] * 2, rhost="192.0.2.77").name != "PAM_SUCCESS"
    assert pam_login(user, [totp_now(secret, +1)], rhost="192.0.2.77").name != "PAM_SUCCESS"

    status = mfa(mfad, "status", user).stdout
    assert re.search(r"^Locked:\s+-$", status, re.MULTILINE)
    shown = re.search(r"^Blocked sources:\s+192\.0\.2\.77 until (\S+)$", status, re.MULTILINE)
    assert shown, status
    until = datetime.fromisoformat(shown.group(1))
    assert timedelta(seconds=590) < until - datetime.now(UTC) <= timedelta(seconds=600)
    assert status in mfa(mfad, "show", user).stdout
    [row] = listed(mfad)
    assert row["source_blocks"] == [{"source": "host:192.0.2.77", "until": shown.group(1)}]
    table = mfa(mfad, "list").stdout.splitlines()
    assert "BLOCKED SOURCES (UTC)" in table[0] and "192.0.2.77 until " in table[1]
    [csv_row] = csv.DictReader(io.StringIO(mfa(mfad, "list", "--csv").stdout))
    assert csv_row["source_blocks"] == f"host:192.0.2.77 until {shown.group(1)}"
    assert [r["user"] for r in listed(mfad, "--sort", "blocked-sources")] == [user]

    result = mfa(mfad, "unlock", user)

    assert result.exit_code == 0, result.output
    lifted = f"192.0.2.77 unblocked (was until {shown.group(1)})"
    assert result.stdout == f"{user}: unlocked: {lifted}\n"
    [cleared] = [r for r in mfad.audit() if r["event"] == "lock_cleared"]
    assert cleared["source_blocks"] == row["source_blocks"]
    trail = mfa(mfad, "audit", "--event", "lock_cleared", "--full").stdout
    assert "unlocked by administrator; unblocked host:192.0.2.77" in trail
    assert "locked_until" not in cleared  # the account was not locked
    assert re.search(r"^Blocked sources:\s+-$", mfa(mfad, "status", user).stdout, re.MULTILINE)
    assert pam_login(user, [totp_now(secret, +1)], rhost="192.0.2.77").name == "PAM_SUCCESS"


UNKNOWN = "mfanosuchuser"
VERBS = [
    ["status", UNKNOWN],
    ["show", UNKNOWN],
    ["enroll", UNKNOWN],
    ["recovery-codes", UNKNOWN],
    ["unlock", UNKNOWN],
    ["require", UNKNOWN],
    ["suspend", UNKNOWN],
    ["resume", UNKNOWN],
    ["disable", "--yes", UNKNOWN],
    ["reset", UNKNOWN],
    ["exempt", "--reason", "test", UNKNOWN],
    ["unexempt", UNKNOWN],
    ["forget", "--yes", UNKNOWN],
]


@pytest.mark.parametrize("args", VERBS, ids=[v[0] for v in VERBS])
def test_every_verb_exits_5_for_a_user_that_does_not_exist(mfad: Daemon, args: list[str]) -> None:
    """Every command that names a user exits 5 ("no such user", as the README promises)
    for a name nobody on the system has, says so, and changes nothing."""
    result = mfa(mfad, *args, input="")

    assert result.exit_code == 5, result.output
    assert UNKNOWN in result.output
    assert mfad.request("list")["accounts"] == []


def test_unlock_names_who_does_not_exist_and_unlocks_the_others(
    mfad: Daemon, make_user: MakeUser, pam_login: Any
) -> None:
    """`mfa unlock` of a real locked user and an unknown name unlocks the real one, says the
    other does not exist (stderr, audited as refused) and exits 5."""
    mfad.restart(lockout=LOCKOUT)
    user = make_user()
    lock(pam_login, user, mfad.enroll(user))

    result = mfa(mfad, "unlock", user, UNKNOWN)

    assert result.exit_code == 5, result.output
    assert result.stdout.startswith(f"{user}: unlocked: account lock")
    assert f"{UNKNOWN}: refused: there is no user" in result.stderr
    assert any(
        (r["event"], r.get("op"), r.get("user"), r["outcome"])
        == ("control", "unlock", UNKNOWN, "refused")
        for r in mfad.audit()
    )

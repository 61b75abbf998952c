"""The `mfa` command against a real mfad on a temporary socket.

Most tests drive the click group in-process with CliRunner; the interactive
enrolment runs the installed `mfa` script in a real pseudo-terminal (pexpect),
and the permission tests run it as a throwaway non-root user (runuser), since
the daemon authorises by the caller's kernel-reported uid.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click
import pexpect
import pyotp
import pytest
import qrimage
from click.testing import CliRunner, Result
from conftest import totp_now
from wire import PamWire

from mfa_cli.client import DaemonClient
from mfa_cli.errors import DaemonUnreachable
from mfa_cli.main import cli
from mfa_wire.framing import Frame

MFA = Path(sys.executable).with_name("mfa")
RECOVERY_CODE = re.compile(r"^  ([2-9A-Z]{5}-[2-9A-Z]{5}-[2-9A-Z]{5})$", re.MULTILINE)


def mfa(mfad: Any, *args: str, input: str | None = None) -> Result:
    """Run `mfa --socket <the test daemon's control socket> ARGS` in-process."""
    return CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), *args], input=input)


def shown_uri(output: str) -> str:
    match = re.search(r"^\s*URI:\s+(otpauth://\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def shown_key(output: str) -> str:
    match = re.search(r"^\s*Key:\s+([A-Z2-7 ]+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def totp_of(uri: str) -> pyotp.TOTP:
    """The authenticator an app would set up from ``uri``."""
    otp = pyotp.parse_uri(uri)
    assert isinstance(otp, pyotp.TOTP), uri
    return otp


def wrong_code(totp: pyotp.TOTP) -> str:
    """A well-formed code that no step the daemon accepts (now ±1, with margin) produces."""
    now = time.time()
    valid = {totp.at(now + k * totp.interval) for k in range(-2, 3)}
    return next(c for c in ("000000", "123456", "999999", "424242", "131313") if c not in valid)


def begin(mfad: Any, user: str) -> tuple[Result, pyotp.TOTP]:
    """`mfa enroll USER` with no code typed: it shows the key and leaves the enrolment pending."""
    result = mfa(mfad, "enroll", user, input="")
    return result, totp_of(shown_uri(result.stdout))


def state_of(mfad: Any, user: str) -> str:
    result = mfa(mfad, "status", user, "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["state"])


def test_help_documents_exit_codes() -> None:
    """`mfa --help` lists every exit code the command uses and shows an example of every
    command; each state-changing command's own help has an example too."""
    result = CliRunner().invoke(cli, ["--help"])

    assert result.exit_code == 0
    for line in (
        "0  success",
        "1  any other error",
        "2  usage error",
        "3  mfad is not reachable",
        "4  not allowed",
        "5  no such user",
        "6  the ver",
        "7  mfa audit verify",
        "8  an account change was refused",
        "9  locked",
        "10  too many requests",
    ):
        assert line in result.output
    assert "mfa enroll alice" in result.output
    for name in cli.commands:
        assert re.search(rf"^\s+mfa {name}\b", result.output, re.MULTILINE), name
    for name in (
        "require",
        "suspend",
        "resume",
        "disable",
        "reset",
        "exempt",
        "unexempt",
        "unlock",
        "forget",
    ):
        own = CliRunner().invoke(cli, [name, "--help"]).output
        assert re.search(rf"Example:\n\s+mfa {name} ", own), name


def test_enroll_shows_a_qr_code_that_scans_to_the_shown_uri(mfad: Any, make_user: Any) -> None:
    """`mfa enroll USER` shows a QR code that a scanner reads as exactly the otpauth:// URI
    printed under it; the URI names the issuer and account and carries the key that is also
    shown in groups of four; digits and period match what is printed (absent from the URI
    means the key-URI format's defaults, 6 and 30). No code given: the enrolment stays
    pending (exit code 0) and the user is told how to confirm it."""
    user = make_user()

    result = mfa(mfad, "enroll", user, input="")

    uri = shown_uri(result.stdout)
    assert qrimage.decode(result.stdout) == uri
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    issuer = query["issuer"][0]
    assert unquote(parts.path) == f"/{issuer}:{user}"
    secret = query["secret"][0]
    assert shown_key(result.stdout).replace(" ", "") == secret
    assert all(len(group) == 4 for group in shown_key(result.stdout).split()[:-1])
    digits, period = int(query.get("digits", ["6"])[0]), int(query.get("period", ["30"])[0])
    assert f"{digits} digits, every {period} s" in result.stdout
    assert result.exit_code == 0, result.output
    assert "pending, not active" in result.stderr
    assert f"echo CODE | mfa enroll {user} --confirm" in result.stderr
    assert state_of(mfad, user) == "none"


def test_wrong_code_does_not_activate_and_right_code_does(mfad: Any, make_user: Any) -> None:
    """A wrong code (`mfa enroll USER --confirm`, the code on stdin) is refused with exit
    code 6 and leaves the user not active; the right code for the key in the QR code then
    activates the enrolment and shows the ten recovery codes once, with the warning to
    store them. Neither verification code is printed."""
    user = make_user()
    _, totp = begin(mfad, user)
    bad = wrong_code(totp)

    refused = mfa(mfad, "enroll", user, "--confirm", input=f"{bad}\n")

    assert refused.exit_code == 6
    assert "Incorrect verification code" in refused.stderr
    assert bad not in refused.output
    assert state_of(mfad, user) == "none"

    good = totp.now()
    accepted = mfa(mfad, "enroll", user, "--confirm", input=f"{good}\n")

    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.startswith(f"Enrolment of {user} is active.\n")
    assert good not in accepted.output
    assert state_of(mfad, user) == "active"
    codes = RECOVERY_CODE.findall(accepted.stdout)
    assert len(set(codes)) == 10
    assert accepted.stdout.endswith("Store these safely, they are not shown again.\n")
    status = json.loads(mfa(mfad, "status", user, "--json").stdout)
    assert status["recovery_codes_left"] == 10


def _spawn(mfad: Any, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        str(MFA),
        ["--socket", str(mfad.control_socket), *args],
        encoding="utf-8",
        timeout=15,
        dimensions=(60, 100),
    )
    return child


def test_interactive_enrol_reprompts_after_a_wrong_code(mfad: Any, make_user: Any) -> None:
    """In a terminal, `mfa enroll` asks "Verification code: ", says "Incorrect verification
    code." and asks again after a wrong code, and then activates on the right one; the QR
    code as drawn on the terminal scans."""
    user = make_user()
    child = _spawn(mfad, "enroll", user)
    child.expect("Verification code: ")
    screen = child.before.replace("\r\n", "\n")
    totp = totp_of(shown_uri(screen))
    assert qrimage.decode(screen) == shown_uri(screen)

    child.sendline(wrong_code(totp))
    child.expect("Incorrect verification code.")
    child.expect("Verification code: ")
    child.sendline(totp.now())
    child.expect(f"Enrolment of {user} is active.")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0
    assert state_of(mfad, user) == "active"


def test_three_wrong_codes_exit_6_and_leave_enrolment_pending(mfad: Any, make_user: Any) -> None:
    """After three wrong codes `mfa enroll` gives up with exit code 6; the user is not
    active, the enrolment is still pending and the right code still confirms it."""
    user = make_user()
    child = _spawn(mfad, "enroll", user)
    child.expect("Verification code: ")
    totp = totp_of(shown_uri(child.before.replace("\r\n", "\n")))
    for attempt in range(3):
        if attempt:
            child.expect("Verification code: ")
        child.sendline(wrong_code(totp))
        child.expect("Incorrect verification code.")
    child.expect("3 incorrect codes; the enrolment of")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 6
    status = json.loads(mfa(mfad, "status", user, "--json").stdout)
    assert status["state"] == "none"
    assert status["enrolment_pending"] is True
    assert mfa(mfad, "enroll", user, "--confirm", input=f"{totp.now()}\n").exit_code == 0


def test_a_code_on_the_command_line_is_refused(mfad: Any, make_user: Any) -> None:
    """`--code N` is refused with a usage error (exit 2), before anything is sent to mfad:
    a code on the command line is visible to every local user in `ps`. The message says
    so and names what to use instead; the option is not in the help."""
    user = make_user()
    _, totp = begin(mfad, user)

    for args, instead in (
        (["enroll", user, "--code", "123456"], "mfa enroll USER --confirm"),
        (
            ["recovery-codes", "--regenerate", "--code", "123456"],
            "mfa recovery-codes --regenerate` asks for the code",
        ),
    ):
        result = mfa(mfad, *args)

        assert result.exit_code == 2, result.output
        assert "Usage:" in result.stderr
        assert "visible to every local user (in `ps`" in result.stderr
        assert instead in result.stderr
        assert "--code" not in CliRunner().invoke(cli, [args[0], "--help"]).output
    assert state_of(mfad, user) == "none"
    assert mfa(mfad, "enroll", user, "--confirm", input=f"{totp.now()}\n").exit_code == 0


def test_scripted_enrolment_gives_the_code_on_stdin(mfad: Any, make_user: Any) -> None:
    """The README's scripted enrolment, run as the installed `mfa`: with nothing on stdin
    `mfa enroll USER` prints the key, leaves the enrolment pending and exits 0, naming the
    next step on stderr; `mfa enroll USER --confirm` with nothing on stdin exits 1 and
    leaves it pending; with the code as a line on stdin it activates it and prints the
    recovery codes, never the code, and says that code is used up and from when the next
    one logs in: the same code at a login is refused as already used."""
    user = make_user()
    command = [str(MFA), "--socket", str(mfad.control_socket), "enroll", user]
    begun = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
    )
    assert begun.returncode == 0, begun.stderr
    assert "pending, not active" in begun.stderr
    assert f"`echo CODE | mfa enroll {user} --confirm`" in begun.stderr
    totp = totp_of(shown_uri(begun.stdout))

    empty = subprocess.run(
        [*command, "--confirm"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert empty.returncode == 1, empty.stderr
    assert "No code given" in empty.stderr
    assert state_of(mfad, user) == "none"

    now = time.time()
    code = totp.at(now)
    confirmed = subprocess.run(
        [*command, "--confirm"],
        input=f"{code}\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout.startswith(f"Enrolment of {user} is active.\n")
    assert len(set(RECOVERY_CODE.findall(confirmed.stdout))) == 10
    assert code not in confirmed.stdout + confirmed.stderr
    assert state_of(mfad, user) == "active"
    next_step = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((now // 30 + 1) * 30))
    used = "The code just given is used up and will not log in again"
    assert used in confirmed.stdout
    if time.time() < (now // 30 + 1) * 30:  # (the next step may have begun meanwhile)
        assert (
            f"{used}: log in with the next code the app shows (from {next_step} UTC on)."
        ) in confirmed.stdout
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [code], service="sshd", rhost="203.0.113.7")
    assert "That code was already used" in " ".join(f.payload for f in frames)
    assert frames[-1] != Frame("R", "S")


def test_enroll_json_gives_scripts_the_key_then_the_recovery_codes(
    mfad: Any, make_user: Any
) -> None:
    """`mfa enroll USER --json` with nothing on stdin prints one JSON object (user, otpauth
    URI, key, token parameters, state "pending", the command that confirms it) and exits 0;
    `mfa enroll USER --confirm --json` with the code on stdin prints the state "active",
    the ten recovery codes and from when the next code logs in."""
    user, other = make_user(), make_user()

    begun = mfa(mfad, "enroll", user, "--json", input="")

    assert begun.exit_code == 0, begun.output
    offer = json.loads(begun.stdout)
    assert offer["user"] == user and offer["state"] == "pending"
    assert offer["uri"].startswith("otpauth://totp/") and offer["secret"] in offer["uri"]
    assert (offer["algorithm"], offer["digits"], offer["period"]) == ("SHA1", 6, 30)
    assert offer["confirm_with"] == f"echo CODE | mfa enroll {user} --confirm"
    assert state_of(mfad, user) == "none"

    totp = pyotp.TOTP(offer["secret"])
    done = mfa(mfad, "enroll", user, "--confirm", "--json", input=f"{totp.now()}\n")

    assert done.exit_code == 0, done.output
    active = json.loads(done.stdout)
    assert (active["user"], active["state"]) == (user, "active")
    assert len(set(active["recovery_codes"])) == 10
    next_code = datetime.fromisoformat(active["next_code_at"]).timestamp()
    assert next_code % 30 == 0 and abs(next_code - time.time()) <= 30
    assert state_of(mfad, user) == "active"

    # stdin is not read for a new key: no code can exist before the key it is made from
    again = mfa(mfad, "enroll", other, "--json", input="123456\n")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["state"] == "pending"


def test_confirm_in_a_terminal_asks_for_the_code_without_echoing_it(
    mfad: Any, make_user: Any
) -> None:
    """In a terminal, `mfa enroll USER --confirm` asks "Verification code: " and does not
    echo what is typed; the right code activates the pending enrolment."""
    user = make_user()
    _, totp = begin(mfad, user)
    child = _spawn(mfad, "enroll", user, "--confirm")
    child.logfile_read = screen = io.StringIO()
    child.expect("Verification code: ")
    code = totp.now()
    child.sendline(code)
    child.expect(f"Enrolment of {user} is active.")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0
    assert code not in screen.getvalue()
    assert state_of(mfad, user) == "active"


def test_enrolling_an_unknown_user_exits_5(mfad: Any) -> None:
    """Enrolling a user the system does not know fails with exit code 5 and says so."""
    result = mfa(mfad, "enroll", "no-such-user-mfa-test", input="")

    assert result.exit_code == 5
    assert "no user 'no-such-user-mfa-test'" in result.stderr
    assert "otpauth://" not in result.output


def test_status_shows_enrolment_and_last_login(
    mfad: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mfa status USER` shows the state and when the user enrolled, which is when a code was
    last verified (the one that confirmed the enrolment), not "never"; after a login it shows
    when and from where the last code was verified and how far the phone's clock is off
    (a code from the next step: one step, about 30 s, ahead). `--json` gives the same as
    data. The socket can also come from MFA_SOCKET."""
    user = make_user()
    secret = mfad.enroll(user)
    monkeypatch.setenv("MFA_SOCKET", str(mfad.control_socket))

    before = CliRunner().invoke(cli, ["status", user])

    assert before.exit_code == 0, before.output
    fields = {k: v.strip() for k, v in (ln.split(":", 1) for ln in before.stdout.splitlines())}
    assert fields["User"] == user
    assert fields["State"] == "active"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", fields["Enrolled at"])
    # the code that confirmed the enrolment (over the control socket: no remote host)
    assert fields["Last verified"] == fields["Enrolled at"]
    assert fields["Last remote host"] == "-"

    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [totp_now(secret, +1)], service="sshd", rhost="203.0.113.7")
    assert frames[-1] == Frame("R", "S")

    after = CliRunner().invoke(cli, ["status", user])

    fields = {k: v.strip() for k, v in (ln.split(":", 1) for ln in after.stdout.splitlines())}
    assert fields["Last verified"].endswith("+00:00")
    assert fields["Last remote host"] == "203.0.113.7"
    assert fields["Clock offset"] == "+1 step (phone clock about 30 s ahead)"
    as_json = json.loads(CliRunner().invoke(cli, ["status", user, "--json"]).stdout)
    assert as_json["user"] == user
    assert as_json["state"] == "active"
    assert as_json["last_rhost"] == "203.0.113.7"
    assert as_json["clock_offset_steps"] == 1
    assert "ok" not in as_json


def test_disable_erases_the_enrolment(mfad: Any, make_user: Any) -> None:
    """`mfa disable USER` asks first (answering no changes nothing), then says what changed;
    afterwards the user is disabled, has no recovery codes and can start a fresh enrolment.
    Disabling a user the system does not know exits 5 and says why on stderr."""
    user = make_user()
    mfad.enroll(user)

    declined = mfa(mfad, "disable", user, input="n\n")

    assert declined.exit_code == 1
    assert f"Erase the authenticator secret of {user} (state: active)?" in declined.stdout
    assert state_of(mfad, user) == "active"

    done = mfa(mfad, "disable", user, input="y\n")

    assert done.exit_code == 0, done.output
    assert (
        f"{user}: active -> disabled (secret and recovery codes erased, history kept)"
        in done.stdout
    )
    status = json.loads(mfa(mfad, "status", user, "--json").stdout)
    assert (status["state"], status["method"], status["recovery_codes_left"]) == (
        "disabled",
        None,
        0,
    )
    again, _ = begin(mfad, user)
    assert "otpauth://" in again.stdout

    nothing = mfa(mfad, "disable", "--yes", "never-enrolled-mfa-test")
    assert nothing.exit_code == 5
    assert "never-enrolled-mfa-test: refused: there is no user" in nothing.stderr
    assert nothing.stdout == ""


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_daemon_down_exits_3_with_a_clear_message(mfad: Any, make_user: Any, how: str) -> None:
    """With mfad stopped (socket gone) or killed (stale socket left behind), every command
    exits 3 and says that mfad is not running and how to start it."""
    user = make_user()
    getattr(mfad, how)()

    for args in (["status", user], ["enroll", user], ["disable", "--yes", user]):
        result = mfa(mfad, *args)

        assert result.exit_code == 3, result.output
        assert "mfad is not running" in result.stderr
        assert str(mfad.control_socket) in result.stderr
        assert "systemctl start mfad" in result.stderr
        assert "Traceback" not in result.output


def test_non_root_user_is_refused_other_accounts(mfad: Any, make_user: Callable[..., str]) -> None:
    """A non-root user may see their own status (the default user), but asking about or
    disabling another account is refused with exit code 4, and so is disabling their own:
    only root or the admin group may remove a second factor."""
    alice, bob = make_user(), make_user()

    own = mfad.mfa_as(alice, "status")
    assert own.returncode == 0, own.stderr
    assert re.search(rf"^User:\s+{alice}$", own.stdout, re.MULTILINE)

    for args in (["status", bob], ["enroll", bob], ["disable", "--yes", bob]):
        refused = mfad.mfa_as(alice, *args)

        assert refused.returncode == 4, refused.stderr
        assert refused.stderr.startswith("Error: ")
        assert bob in refused.stderr
        assert "otpauth://" not in refused.stdout

    assert mfad.mfa_as(alice, "disable", "--yes", alice).returncode == 4


def test_a_daemon_that_does_not_answer_times_out_with_exit_3(tmp_path: Path) -> None:
    """A socket that accepts connections but never answers (a hung daemon) does not hang
    `mfa`: the request gives up after its timeout with exit code 3 and says so."""
    path = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(path))
        hung.listen()

        with pytest.raises(DaemonUnreachable) as caught:
            DaemonClient(path, timeout=0.3).request("status", user="root")

    assert caught.value.exit_code == 3
    assert caught.value.message == f"mfad at {path} did not answer within 0.3 s"


def _commands(group: click.Group, prefix: str = "mfa") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        found.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
    return found


@pytest.mark.parametrize("name,command", _commands(cli), ids=lambda v: str(v))
def test_every_command_shows_an_example_in_its_help(name: str, command: click.Command) -> None:
    """`mfa COMMAND --help`, for every command and subcommand, ends with examples of that
    command as a person would type it."""
    words = name.split()[1:]
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"^\s+{re.escape(name)}\b", result.output, re.MULTILINE), result.output

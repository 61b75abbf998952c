"""HOTP (RFC 4226) tokens through the real libpam: enrolment of a hardware token,
look-ahead, replay, resync, and the guard over all of it.

The token is RFC 4226 Appendix D's: the key "12345678901234567890" and its
published codes for counters 0 to 9, so the daemon is checked against the RFC
rather than against the library it uses.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from conftest import SEEN, Daemon, MakeUser, PamLogin, running_daemon
from pgcluster import PgCluster
from wire import PamWire

from mfad import config, hotp
from mfad.errors import ConfigError
from mfad.model import Kind, TokenParams

RFC_KEY = b"12345678901234567890"
RFC_CODES = [  # RFC 4226 Appendix D, counters 0..9
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]
SEEN["secret"].update({RFC_KEY.hex(), base64.b32encode(RFC_KEY).decode().rstrip("=")})
SEEN["code"].update(RFC_CODES)

pytest_plugins = ["pgcluster"]
MFA = Path(sys.executable).with_name("mfa")


def code(counter: int, key: bytes = RFC_KEY) -> str:
    value = pyotp.HOTP(base64.b32encode(key).decode()).at(counter)
    SEEN["code"].add(value)
    return value


def enrol_hardware(mfad: Daemon, user: str, **fields: Any) -> dict[str, Any]:
    answer = mfad.request("enroll_hotp", user=user, secret=RFC_KEY.hex(), encoding="hex", **fields)
    assert answer["ok"], answer
    return answer


def test_hotp_matches_rfc_4226_appendix_d() -> None:
    """hotp.code_at gives RFC 4226's published codes for its test key, counters 0 to 9."""
    params = TokenParams(kind=Kind.HOTP)
    assert [hotp.code_at(RFC_KEY, params, c) for c in range(10)] == RFC_CODES


def test_rfc_4226_codes_log_in_through_libpam_once_each_in_order(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """A hardware token enrolled by an administrator is active at once: each Appendix D
    code logs in once; the same code again, or one below a code already used, is
    refused; pressing the button a few times between logins (within the look-ahead)
    is fine; the history says hotp."""
    user = make_user()
    answer = enrol_hardware(mfad, user)
    assert answer["kind"] == "hotp" and len(answer["recovery_codes"]) == 10
    assert pam_login(user, [RFC_CODES[0]]).name == "PAM_SUCCESS"
    assert pam_login(user, [RFC_CODES[0]] * 3).name == "PAM_MAXTRIES"
    assert pam_login(user, [RFC_CODES[1]]).name == "PAM_SUCCESS"
    assert pam_login(user, [RFC_CODES[5]]).name == "PAM_SUCCESS"  # 2, 3, 4 pressed unused
    assert pam_login(user, [RFC_CODES[4]] * 3).name == "PAM_MAXTRIES"
    assert pam_login(user, [RFC_CODES[6]]).name == "PAM_SUCCESS"
    challenges = [r for r in mfad.audit() if r["event"] == "challenge" and r["user"] == user]
    assert {r["method"] for r in challenges} == {"hotp"}
    shown = mfad.request("show", user=user)
    assert {h["method"] for h in shown["history"]} == {"hotp"}
    assert shown["method"] == "hotp" and shown["hotp_counter"] == 6
    replays = [r for r in mfad.audit() if r.get("reason") == "replayed_code"]
    assert replays and all(r["user"] == user for r in replays)


def test_look_ahead_takes_codes_up_to_the_setting_and_no_further(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """With hotp.look_ahead 3 and counter 0 next, the code for counter 3 is beyond reach
    (0, 1, 2 are looked at) until the counter moves on; counter 2's is taken."""
    mfad.restart(hotp={"look_ahead": 3})
    user = make_user()
    enrol_hardware(mfad, user)
    assert pam_login(user, [RFC_CODES[3]] * 3).name == "PAM_MAXTRIES"
    assert pam_login(user, [RFC_CODES[2]]).name == "PAM_SUCCESS"
    assert pam_login(user, [RFC_CODES[5]]).name == "PAM_SUCCESS"  # 3, 4, 5 from counter 3


def test_a_start_counter_marks_earlier_codes_used(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """`counter` (the token's next counter) at enrolment: codes before it are refused."""
    user = make_user()
    enrol_hardware(mfad, user, counter=8)
    assert pam_login(user, [RFC_CODES[7]] * 3).name == "PAM_MAXTRIES"
    assert pam_login(user, [RFC_CODES[8]]).name == "PAM_SUCCESS"


def test_resync_brings_back_a_token_pressed_past_the_look_ahead(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """A token pressed 50 times is out of the look-ahead; two consecutive codes resync
    it (admin only), after which the next code logs in and the two given are used. Two
    codes that are not consecutive are refused and counted by the guard."""
    user = make_user()
    enrol_hardware(mfad, user)
    assert pam_login(user, [code(50)] * 3).name == "PAM_MAXTRIES"
    wrong = mfad.request("resync", user=user, codes=[code(50), code(52)])
    assert (wrong["ok"], wrong["error"]) == (False, "wrong_code")
    synced = mfad.request("resync", user=user, codes=[code(50), code(51)])
    assert synced["ok"] and synced["counter"] == 51, synced
    assert mfad.request("unlock", user=user)["ok"]  # the three wrong codes above
    assert pam_login(user, [code(51), code(52)]).name == "PAM_SUCCESS"
    assert mfad.audit()[-2]["reason"] == "replayed_code"  # 51: used by the resync
    attempts = [r for r in mfad.audit() if r["event"] == "attempt" and r.get("purpose") == "resync"]
    assert len(attempts) == 1 and attempts[0]["reason"] == "incorrect_code"
    records = [r for r in mfad.audit() if r.get("op") == "resync" and r["outcome"] == "success"]
    assert len(records) == 1 and records[0]["counter"] == 51


def test_resync_is_for_administrators_and_hotp_tokens_only(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A user may not resync even their own token; a TOTP account cannot be resynced."""
    user, app_user = make_user(), make_user()
    enrol_hardware(mfad, user)
    mfad.enroll(app_user)
    own = mfad.mfa_as(user, "resync", user, input=f"{code(20)}\n{code(21)}\n")
    assert own.returncode != 0 and "administrator" in own.stderr
    totp_account = mfad.request("resync", user=app_user, codes=["123456", "234567"])
    assert (totp_account["ok"], totp_account["error"]) == (False, "not_enrolled")


@pytest.mark.parametrize("bad", [{"secret": "zz", "encoding": "hex"}, {"secret": "AAAA"}])
def test_enroll_hotp_refuses_a_bad_or_short_key(
    mfad: Daemon, make_user: MakeUser, bad: dict[str, str]
) -> None:
    """A key that does not decode, or is shorter than 80 bits, is refused and nothing is
    enrolled; the answer does not repeat the key."""
    user = make_user()
    answer = mfad.request("enroll_hotp", user=user, **bad)
    assert answer["ok"] is False and bad["secret"] not in answer["message"]
    assert mfad.request("status", user=user)["state"] == "none"


def _on(dsn: str) -> dict[str, object]:
    return {
        "store": {"backend": "postgresql", "dsn": dsn},
        "lockout": {"delay": 0, "source_deny": 100, "deny": 3},
        "login": {"max_attempts": 1},
    }


@pytest.fixture
def fleet(pg_cluster: PgCluster) -> Iterator[tuple[Daemon, Daemon]]:
    """Two daemons (hosts) on one fresh PostgreSQL database, sharing one key file."""
    dsn = pg_cluster.create_database()
    with running_daemon() as first, running_daemon() as second:
        first.restart(**_on(dsn))
        second.stop()
        shutil.copy(first.key_path, second.key_path)
        second.start(**_on(dsn))
        yield first, second


def _login(daemon: Daemon, user: str, answer: str) -> str:
    with PamWire(daemon.pam_socket) as wire:
        return wire.login(user, [answer], service="sshd", rhost="192.0.2.5")[-1].payload


def test_an_imported_hotp_token_is_an_ordinary_account_in_fleet_mode(
    fleet: tuple[Daemon, Daemon], make_user: MakeUser
) -> None:
    """A usersfile imported through one host: its counter is shared, so a code used on one
    host is refused on the other; and wrong answers on both hosts count towards one lock,
    which then refuses even a right code on either (lockout applies to imports as to any)."""
    first, second = fleet
    user = make_user()
    line = f"HOTP {user} - {RFC_KEY.hex()} 2 {RFC_CODES[2]} 2024-01-31T12:00:00L\n"
    imported = first.request("import_oath", text=line)
    assert imported["ok"] and [r["user"] for r in imported["imported"]] == [user], imported
    assert _login(second, user, RFC_CODES[2]) == "M"  # used before the import
    assert _login(second, user, RFC_CODES[3]) == "S"
    assert _login(first, user, RFC_CODES[3]) == "M"
    assert _login(first, user, "000000") == "M"
    # the third wrong answer since the success, on the other host: lockout.deny is reached
    assert _login(second, user, "000000") == "F"
    assert [r["reason"] for r in second.audit() if r["event"] == "lock_set"] == ["deny"]
    assert first.request("status", user=user)["locked_until"] is not None
    assert _login(first, user, RFC_CODES[4]) == "F"  # locked on every host


def test_look_ahead_out_of_range_is_refused_with_its_line() -> None:
    """hotp.look_ahead is validated like every setting: 0 is refused naming line and key."""
    with pytest.raises(
        ConfigError,
        match=r"mfad.yaml line 3: hotp.look_ahead: must be a whole number from 1 to 100",
    ):
        config.parse("mode: optional\nhotp:\n  look_ahead: 0\n", "mfad.yaml")
    assert config.parse("hotp:\n  look_ahead: 25\n").hotp.look_ahead == 25
    assert config.parse("").hotp.look_ahead == 10


def test_a_user_may_not_enrol_a_hardware_token_and_the_key_stays_off_argv(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """`mfa enroll --hotp` takes the key on stdin only (there is no option for it), and a
    user who is not an administrator is refused even for their own account."""
    user = make_user()
    own = mfad.mfa_as(user, "enroll", user, "--hotp", "--hex", input=RFC_KEY.hex() + "\n")
    assert own.returncode == 4, own.stderr
    assert mfad.request("status", user=user)["state"] == "none"
    client = subprocess.run(
        [str(MFA), "--socket", str(mfad.control_socket), "enroll", user, "--hotp", "--hex"],
        input=RFC_KEY.hex() + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert client.returncode == 0, client.stderr
    assert RFC_KEY.hex() not in client.stdout + client.stderr
    assert mfad.request("status", user=user)["method"] == "hotp"


def test_mfa_resync_and_status_on_the_command_line(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """`mfa resync USER` reads the two codes from stdin (never argv), says the token is in
    step, and `mfa status` then shows an HOTP token with its last counter, not a period;
    the codes appear in neither output."""
    user = make_user()
    enrol_hardware(mfad, user)

    def mfa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(MFA), "--socket", str(mfad.control_socket), *args]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)

    synced = mfa("resync", user, stdin=f"{code(30)}\n{code(31)}\n")
    assert synced.returncode == 0, synced.stderr
    assert "in step again" in synced.stdout
    assert code(30) not in synced.stdout + synced.stderr
    status = mfa("status", user)
    assert "hotp, SHA1, 6 digits, last counter used 31" in status.stdout, status.stdout
    assert "every" not in status.stdout
    one = mfa("resync", user, stdin=f"{code(40)}\n")
    assert one.returncode != 0 and "Two codes are needed" in one.stderr
    assert pam_login(user, [code(32)]).name == "PAM_SUCCESS"

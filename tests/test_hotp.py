"""HOTP (RFC 4226) tokens through the real libpam: enrolment of a hardware token,
look-ahead, replay, resync, and the guard over all of it.

The token is RFC 4226 Appendix D's: the key "12345678901234567890" and its
published codes for counters 0 to 9, so the daemon is checked against the RFC
rather than against the library it uses.
"""

from __future__ import annotations

import base64
from typing import Any

import pyotp
import pytest
from conftest import SEEN, Daemon, MakeUser, PamLogin

from mfad import hotp
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

"""Enrolment at next login, recovery codes, token parameters and account lifecycle actions."""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from conftest import Daemon, MakeGroup, MakeUser, PamLogin, totp_from_uri, totp_now
from fakeclock import FakeClock
from qrimage import decode as decode_terminal_qr

from mfad import recovery

pytest_plugins = ["fakeclock"]

CODE_RE = re.compile(r"^\s+([2-9A-Z]{5}-[2-9A-Z]{5}-[2-9A-Z]{5})$", re.M)


def _enrol_at_login(pam_login: PamLogin, user: str) -> tuple[str, list[str]]:
    """Go through enrolment at login as a person would: scan, type the code, keep the codes."""
    first = pam_login(user, [])  # no answer: the user reads the screen and gives up
    info = "\n".join(first.texts("info"))
    uri = decode_terminal_qr(info)
    assert uri in info  # the QR code carries exactly the URI shown beside it
    secret = parse_qs(urlparse(uri).query)["secret"][0]
    assert f"Key: {' '.join(secret[i : i + 4] for i in range(0, len(secret), 4))}" in info
    second = pam_login(user, [pyotp.TOTP(secret).now(), ""])  # "" presses Enter at the end
    assert second.name == "PAM_SUCCESS", second
    assert second.messages[-1] == ("prompt_on", "Press Enter once the recovery codes are saved: ")
    codes = CODE_RE.findall("\n".join(second.texts("info")))
    return secret, codes


def test_pending_user_enrols_at_login_then_uses_code_and_recovery_code(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """Scan the QR shown at login, confirm, get 10 recovery codes (`mfa status` then shows the
    confirmation as the last verified code, from the login's host); then a code logs in,
    and a recovery code logs in exactly once."""
    user = make_user()
    mfad.request("require", user=user)
    secret, codes = _enrol_at_login(pam_login, user)
    assert len(codes) == 10 and len(set(codes)) == 10
    status = mfad.request("status", user=user)
    assert status["state"] == "active"
    # the confirming code is the last verification, from the login's host
    assert status["last_verified_at"] == status["enrolled_at"] is not None
    assert status["last_rhost"] == "192.0.2.1"
    assert pam_login(user, [totp_now(secret, 1)]).name == "PAM_SUCCESS"
    assert pam_login(user, [codes[0].lower().replace("-", " ")]).name == "PAM_SUCCESS"
    again = pam_login(user, [codes[0]] * 3)
    assert again.name == "PAM_MAXTRIES"
    used = [r for r in mfad.audit() if r["event"] == "recovery_code_used"]
    assert [r["remaining"] for r in used] == [9]
    history = mfad.request("show", user=user)["history"]
    assert [h["method"] for h in history][:2] == ["recovery", "totp"]


def test_unconfirmed_enrolment_never_becomes_active(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """Three wrong codes at enrolment: the user stays pending and nothing was activated."""
    user = make_user()
    mfad.request("require", user=user)
    assert pam_login(user, ["000000"] * 3).name == "PAM_MAXTRIES"
    assert mfad.request("status", user=user)["state"] == "pending"


def test_low_recovery_codes_warn_at_login(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """With two or fewer codes left, logging in with one says how many remain."""
    user = make_user()
    mfad.restart(enrolment={"recovery_codes": 3})
    mfad.request("require", user=user)
    _, codes = _enrol_at_login(pam_login, user)
    assert len(codes) == 3
    result = pam_login(user, [codes[0], ""])  # "" presses Enter after the warning
    assert result.name == "PAM_SUCCESS"
    assert any("Only 2 recovery codes left" in t for t in result.texts("info"))
    assert result.messages[-1] == ("prompt_on", "Press Enter to continue: ")


def test_regenerated_recovery_codes_replace_the_old_ones(mfad: Daemon, pam_login: PamLogin) -> None:
    """After regeneration the old codes fail and the new ones work."""
    mfad.enroll("root")
    old = mfad.request("recovery_codes", user="root", regenerate=True)["codes"]
    new = mfad.request("recovery_codes", user="root", regenerate=True)["codes"]
    assert pam_login("root", [old[0]] * 3).name == "PAM_MAXTRIES"
    assert pam_login("root", [new[0]]).name == "PAM_SUCCESS"
    assert mfad.request("recovery_codes", user="root")["remaining"] == 9


def test_recovery_codes_are_stored_only_as_digests(mfad: Daemon) -> None:
    """No recovery code appears in the store file in any form a person typed."""
    mfad.enroll("root")
    codes = mfad.request("recovery_codes", user="root", regenerate=True)["codes"]
    mfad.stop()
    raw = mfad.db_path.read_bytes()
    for code in codes:
        assert code.encode() not in raw and code.replace("-", "").encode() not in raw


@pytest.mark.parametrize(
    ("algorithm", "digits", "period"),
    [
        ("SHA1", 6, 30),
        ("SHA256", 8, 30),
        ("SHA512", 6, 60),
    ],
)
def test_token_parameters_travel_in_the_uri_and_work(
    mfad: Daemon, pam_login: PamLogin, algorithm: str, digits: int, period: int
) -> None:
    """8 digits, SHA256/SHA512 and 60 s tokens: the URI carries them and their codes log in."""
    begun = mfad.request(
        "enroll_begin", user="root", algorithm=algorithm, digits=digits, period=period
    )
    otp = totp_from_uri(begun["uri"])
    assert (otp.digits, otp.interval, otp.digest().name.upper().replace("SHA", "SHA")) == (
        digits,
        period,
        algorithm,
    )
    assert mfad.request(
        "enroll_confirm", user="root", code=otp.at(__import__("time").time() - period)
    )["ok"]
    assert pam_login("root", [otp.now()]).name == "PAM_SUCCESS"


LIFECYCLE = [
    # action, starting state, resulting state (None: refused)
    ("require", "none", "pending"),
    ("require", "active", None),
    ("suspend", "active", "suspended"),
    ("suspend", "none", None),
    ("resume", "suspended", "active"),
    ("resume", "active", None),
    ("disable", "active", "disabled"),
    ("disable", "none", None),
    ("reset", "active", "pending"),
    ("reset", "suspended", "pending"),
    ("exempt", "active", "exempt"),
    ("exempt", "exempt", None),
    ("unexempt", "exempt", "active"),
    ("unexempt", "active", None),
]


def _put_in(mfad: Daemon, user: str, state: str) -> None:
    if state == "none":
        return
    mfad.enroll(user)
    if state == "suspended":
        mfad.request("suspend", user=user)
    elif state == "exempt":
        mfad.request("exempt", user=user, reason="service account")


@pytest.mark.parametrize(("action", "start", "end"), LIFECYCLE)
def test_lifecycle_transitions_are_applied_or_refused_with_a_reason(
    mfad: Daemon, make_user: MakeUser, action: str, start: str, end: str | None
) -> None:
    """Each action moves the account as documented or refuses, and either way is audited."""
    user = make_user()
    _put_in(mfad, user, start)
    reply = mfad.request(action, users=[user], reason="test")
    if end is None:
        assert reply["changed"] == []
        assert reply["refused"][0]["user"] == user and user in reply["refused"][0]["message"]
        assert mfad.audit()[-1]["outcome"] == "refused"
    else:
        assert reply["changed"] == [{"user": user, "from": start, "to": end}]
        record = mfad.audit()[-1]
        assert (record["op"], record["actor"], record["user"]) == (action, "root", user)
        assert mfad.request("status", user=user)["state"] == end


def test_reset_and_disable_erase_the_token_and_recovery_codes(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """reset sends the user back to pending with nothing left of the old token."""
    user = make_user()
    mfad.enroll(user)
    mfad.request("reset", user=user)
    status = mfad.request("status", user=user)
    assert (status["state"], status["method"], status["recovery_codes_left"]) == (
        "pending",
        None,
        0,
    )


def test_group_actions_and_list(mfad: Daemon, make_user: MakeUser, make_group: MakeGroup) -> None:
    """`require --group` reaches every member; list filters by state and group and sorts."""
    a, b, outsider = make_user(), make_user(), make_user()
    group = make_group(a, b)
    mfad.enroll(outsider)
    changed = mfad.request("require", group=group)["changed"]
    assert sorted(c["user"] for c in changed) == sorted([a, b])
    rows = mfad.request("list", state="pending")["accounts"]
    assert sorted(r["user"] for r in rows) == sorted([a, b])
    rows = mfad.request("list", group=group, sort="user", descending=True)["accounts"]
    assert [r["user"] for r in rows] == sorted([a, b], reverse=True)
    everyone = mfad.request("list")["accounts"]
    assert {r["user"]: r["state"] for r in everyone}[outsider] == "active"


def test_a_key_from_mfa_enroll_expires_with_the_enrolment_deadline(
    mfad_clock: Daemon, fake_clock: FakeClock, make_user: MakeUser
) -> None:
    """A key `mfa enroll` showed and nobody confirmed stops working at the enrolment
    deadline (grace_days): its code no longer activates it, and a new enrolment is needed."""
    mfad = mfad_clock
    mfad.restart(enrolment={"grace_days": 2 / 86400})  # two seconds
    user = make_user()
    begun = mfad.request("enroll_begin", user=user)
    fake_clock.advance(2.5)
    late = mfad.request("enroll_confirm", user=user, code=fake_clock.totp(begun["secret"]))
    assert late["ok"] is False and late["error"] == "no_pending_enrolment", late
    assert "expired" in late["message"]
    assert mfad.request("status", user=user)["enrolment_pending"] is False


def test_recovery_codes_carry_at_least_64_bits(mfad: Daemon, make_user: MakeUser) -> None:
    """Each recovery code is drawn from the 30-symbol alphabet with enough symbols for 64
    bits or more (NIST SP 800-63B's minimum for a look-up secret)."""
    user = make_user()
    mfad.enroll(user)
    codes = mfad.request("recovery_codes", user=user, regenerate=True)["codes"]
    for code in codes:
        symbols = code.replace("-", "")
        assert set(symbols) <= set(recovery.ALPHABET)
        assert len(symbols) * math.log2(len(recovery.ALPHABET)) >= 64, code


def _key_shown(pam_login: PamLogin, user: str, rhost: str) -> str:
    info = "\n".join(pam_login(user, [], rhost=rhost).texts("info"))
    return info.split("Key: ", 1)[1].split("\n", 1)[0]


def test_an_unconfirmed_key_is_shown_again_only_where_it_was_shown(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """A key shown at login is shown again to the same host (the user was cut off), never to
    another one, and a key made by `mfa enroll` is never shown at login: whoever next gets
    past the password must not learn a key the owner is about to confirm."""
    user = make_user()
    mfad.request("require", user=user)
    first = _key_shown(pam_login, user, "192.0.2.1")
    assert _key_shown(pam_login, user, "192.0.2.1") == first
    assert _key_shown(pam_login, user, "192.0.2.2") != first
    begun = mfad.request("enroll_begin", user=user)["secret"]
    shown = _key_shown(pam_login, user, "192.0.2.1").replace(" ", "")
    assert shown != begun


def test_an_enrolment_is_not_confirmed_once_an_administrator_suspended_the_account(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A key begun before an administrator suspends the account does not make it active
    afterwards: the confirmation is refused and the account stays suspended."""
    user = make_user()
    mfad.request("require", user=user)
    begun = mfad.request("enroll_begin", user=user)
    assert mfad.request("suspend", user=user)["changed"]
    late = mfad.request("enroll_confirm", user=user, code=totp_now(begun["secret"]))
    assert late["ok"] is False and "suspended" in late["message"]
    assert mfad.request("status", user=user)["state"] == "suspended"


@pytest.mark.parametrize("params", [{"algorithm": []}, {"digits": 6.0}, {"period": "30"}])
def test_token_parameters_of_the_wrong_type_are_a_bad_request(
    mfad: Daemon, make_user: MakeUser, params: dict[str, Any]
) -> None:
    """Token parameters of the wrong JSON type are refused as a bad request, not taken
    for a fault in mfad (`unavailable`)."""
    answer = mfad.request("enroll_begin", user=make_user(), **params)
    assert answer["ok"] is False and answer["error"] == "bad_request", answer

"""Who must use MFA: every state and precedence rule, through the real libpam, with its record.

Rules (daemon/mfad/policy.py, README "Policy"), highest first: mode off; exempt or
suspended; locked; active; pending (explicit per-user requirement); exempt_groups;
require_groups or mode required; else optional.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Daemon, MakeGroup, MakeUser, PamLogin, totp_now
from fakeclock import FakeClock
from wire import PamWire

pytest_plugins = ["fakeclock"]


def _last_login(mfad: Daemon) -> dict[str, Any]:
    return [r for r in mfad.audit() if r["event"] == "login"][-1]


def _expect(mfad: Daemon, result: Any, name: str, outcome: str, reason: str) -> None:
    assert result.name == name, result
    record = _last_login(mfad)
    assert (record["outcome"], record["reason"]) == (outcome, reason)


def test_mode_off_beats_everything(mfad: Daemon, pam_login: PamLogin, make_user: MakeUser) -> None:
    """mode off: even an enrolled user is skipped (PAM_IGNORE), recorded as mode_off."""
    user = make_user()
    mfad.enroll(user)
    mfad.restart(mode="off")
    _expect(mfad, pam_login(user, []), "PAM_IGNORE", "skipped", "mode_off")


def test_exempt_user_is_skipped_until_the_exemption_expires(
    mfad: Daemon, fake_clock: FakeClock, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """An exempt user is skipped; once the expiry passes, their kept token is required again."""
    fake_clock.attach(mfad)
    user = make_user()
    secret = fake_clock.enroll(mfad, user)
    soon = datetime.fromtimestamp(fake_clock.now() + 2, UTC).isoformat()
    changed = mfad.request("exempt", user=user, reason="break-glass", until=soon)["changed"]
    assert changed == [{"user": user, "from": "active", "to": "exempt"}]
    _expect(mfad, pam_login(user, []), "PAM_IGNORE", "skipped", "exempt")
    fake_clock.advance(2.2)
    _expect(
        mfad, pam_login(user, [fake_clock.totp(secret)]), "PAM_SUCCESS", "success", "correct_code"
    )


def test_suspended_user_is_skipped_and_resumes_with_the_same_token(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """suspend keeps the secret and skips; resume makes the same token work again."""
    user = make_user()
    secret = mfad.enroll(user)
    mfad.request("suspend", user=user)
    _expect(mfad, pam_login(user, []), "PAM_IGNORE", "skipped", "suspended")
    assert mfad.request("resume", user=user)["changed"][0]["to"] == "active"
    _expect(mfad, pam_login(user, [totp_now(secret)]), "PAM_SUCCESS", "success", "correct_code")


def test_active_user_needs_a_code_even_in_an_exempt_group(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser, make_group: MakeGroup
) -> None:
    """An enrolled user's own token outranks an exempt group: a wrong code is refused."""
    user = make_user()
    mfad.enroll(user)
    mfad.restart(exempt_groups=[make_group(user)])
    _expect(mfad, pam_login(user, ["000000"] * 3), "PAM_MAXTRIES", "failure", "too_many_attempts")


def test_explicit_requirement_outranks_an_exempt_group(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser, make_group: MakeGroup
) -> None:
    """`mfa require` on a member of an exempt group: that user must still enrol."""
    user = make_user()
    mfad.restart(exempt_groups=[make_group(user)], enrolment={"at_login": False})
    mfad.request("require", user=user)
    _expect(mfad, pam_login(user, []), "PAM_AUTH_ERR", "failure", "not_enrolled")


def test_exempt_group_outranks_required_mode(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser, make_group: MakeGroup
) -> None:
    """mode required, user in exempt_groups and not enrolled: skipped as exempt_group."""
    user = make_user()
    mfad.restart(exempt_groups=[make_group(user)])
    _expect(mfad, pam_login(user, []), "PAM_IGNORE", "skipped", "exempt_group")


def test_require_group_in_optional_mode(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser, make_group: MakeGroup
) -> None:
    """mode optional: members of a require group must enrol, others are skipped."""
    member, other = make_user(), make_user()
    mfad.restart(
        mode="optional", require_groups=[make_group(member)], enrolment={"at_login": False}
    )
    _expect(mfad, pam_login(other, []), "PAM_IGNORE", "skipped", "optional_not_enrolled")
    result = pam_login(member, [])
    _expect(mfad, result, "PAM_AUTH_ERR", "failure", "not_enrolled")
    assert "Contact your administrator" in " ".join(result.texts("error"))
    assert mfad.request("status", user=member)["state"] == "pending"


def test_required_mode_offers_enrolment_at_login(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """mode required, not enrolled: the login shows a QR code and asks to confirm a code."""
    user = make_user()
    result = pam_login(user, ["000000"] * 3)
    assert result.name == "PAM_MAXTRIES"
    info = " ".join(result.texts("info"))
    assert "otpauth://totp/" in info and "\u2588" in info
    events = [r["event"] for r in mfad.audit()]
    assert "enrolment_started" in events
    assert _last_login(mfad)["reason"] == "too_many_attempts"


def test_service_override_tightens_and_loosens(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """services: sudo required, cron off, on top of mode optional."""
    user = make_user()
    secret = mfad.enroll(user)
    plain = make_user()
    mfad.restart(
        mode="optional", services={"sudo": "required", "cron": "off"}, enrolment={"at_login": False}
    )
    _expect(
        mfad, pam_login(plain, [], service="sshd"), "PAM_IGNORE", "skipped", "optional_not_enrolled"
    )
    _expect(mfad, pam_login(plain, [], service="sudo"), "PAM_AUTH_ERR", "failure", "not_enrolled")
    _expect(mfad, pam_login(user, [], service="cron"), "PAM_IGNORE", "skipped", "mode_off")
    _expect(
        mfad,
        pam_login(user, [totp_now(secret)], service="sudo"),
        "PAM_SUCCESS",
        "success",
        "correct_code",
    )


def test_enrolment_deadline_passed_refuses_with_a_message(
    mfad: Daemon, fake_clock: FakeClock, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """A pending user past the enrolment deadline is refused and told to contact an admin."""
    user = make_user()
    fake_clock.attach(mfad, enrolment={"grace_days": 1 / 86400})  # one second
    mfad.request("require", user=user)
    fake_clock.advance(1.2)
    result = pam_login(user, [])
    _expect(mfad, result, "PAM_AUTH_ERR", "failure", "enrolment_expired")
    assert "Contact your administrator" in " ".join(result.texts("error"))


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_unknown_name_is_treated_like_a_real_unenrolled_user_would_be(
    mfad: Daemon, pam_login: PamLogin, mode: str
) -> None:
    """A name NSS does not know: skipped in optional mode, prompted (and failed) in required."""
    mfad.restart(mode=mode)
    result = pam_login("no-such-user-x", ["000000"] * 3)
    expected = "PAM_IGNORE" if mode == "optional" else "PAM_MAXTRIES"
    assert result.name == expected


def test_a_locked_user_who_must_enrol_is_refused_before_any_key_is_shown(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """Locked comes before "must enrol" (README's rule 4 before rule 6): a pending user
    whose account is locked is told so at login and shown no key to scan."""
    mfad.restart(lockout={"source_deny": 10})  # so that five wrong codes lock the account
    user = make_user()
    mfad.request("require", user=user)
    begun = mfad.request("enroll_begin", user=user)
    assert begun["ok"], begun
    for _ in range(5):  # wrong confirmations lock the account, like wrong codes anywhere
        mfad.request("enroll_confirm", user=user, code="000000")
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [], service="sshd", rhost="192.0.2.77")
    texts = [f.payload for f in frames]
    assert texts[-1] == "F" and "locked" in texts[-2], texts
    assert not any("Scan this QR code" in t for t in texts), texts

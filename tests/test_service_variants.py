"""`su -` runs the PAM service su-l and `sudo -i` the service sudo-i: a `services` rule
written for su or sudo must cover them too, or `su -` is a way around it (issue 13).
Through the real pam_mfa.so and libpam, against a real mfad."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Daemon, MakeUser, PamLogin

ENROL_INTRO = "Multi-factor authentication is now required for this account."


def logins(mfad: Daemon, service: str) -> list[dict[str, Any]]:
    return [r for r in mfad.audit() if r.get("event") == "login" and r.get("service") == service]


@pytest.mark.parametrize(("rule", "variant"), [("su", "su-l"), ("sudo", "sudo-i")])
def test_a_rule_for_the_base_service_covers_its_login_shell_variant(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser, rule: str, variant: str
) -> None:
    """mode optional, `services: {su: required}`: an unenrolled user logging in through
    login (no rule) is skipped; through su-l they must enrol, as through su."""
    mfad.restart(mode="optional", services={rule: "required"})
    user = make_user()

    through_login = pam_login(user, [], service="login")
    through_variant = pam_login(user, [], service=variant)

    assert any(ENROL_INTRO in text for text in through_variant.texts()), through_variant
    assert through_variant.name != "PAM_SUCCESS"
    assert through_login.name == "PAM_IGNORE"
    assert [r["reason"] for r in logins(mfad, variant)] == ["aborted"]  # no code given
    [changed] = [r for r in mfad.audit() if r.get("event") == "state_changed"]
    assert (changed["service"], changed["reason"]) == (variant, "required_by_mode")


def test_the_variant_keeps_a_rule_of_its_own(
    mfad: Daemon, pam_login: PamLogin, make_user: MakeUser
) -> None:
    """`services: {su: required, su-l: off}`: su-l's own entry wins over su's."""
    mfad.restart(mode="optional", services={"su": "required", "su-l": "off"})
    user = make_user()

    assert pam_login(user, [], service="su-l").name == "PAM_IGNORE"
    [record] = logins(mfad, "su-l")
    assert record["reason"] == "mode_off"

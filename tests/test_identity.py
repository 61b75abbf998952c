"""Names are resolved through NSS to one canonical name and uid before any decision.

On 5e2ee70 mfad keyed accounts by the name as typed: with a directory that
matches names case-insensitively (SSSD and AD commonly do) `Alice` logged in as
alice and, with `mode: optional`, skipped alice's second factor; and a user
deleted and re-created under the same name with another uid inherited the old
token.
"""

from __future__ import annotations

import pwd
import secrets
import subprocess
from collections.abc import Callable

from conftest import Daemon, MakeGroup, totp_now
from nsswrap import (
    ALICE,
    CAROL,
    CiUser,
    NssCi,
    ci_daemon_fixture,  # noqa: F401  (provides the `ci_daemon` fixture)
    nss_ci_fixture,  # noqa: F401  (provides the `nss_ci` fixture)
)
from wire import ControlAs, PamWire

MakeUser = Callable[..., str]


def _login(mfad: Daemon, typed: str, answers: list[str]) -> list[str]:
    with PamWire(mfad.pam_socket) as wire:
        return [f.payload for f in wire.login(typed, answers, service="sshd", rhost="192.0.2.3")]


def test_another_spelling_of_a_name_is_the_same_account(ci_daemon: Daemon) -> None:
    """With a case-insensitive directory and mode optional, `Alice` and `ALICE` are alice:
    asked for alice's code (never skipped), a wrong one refused, the right one accepted, and
    the audit trail names alice and what was typed."""
    ci_daemon.restart(mode="optional")
    secret = ci_daemon.enroll("alice")
    wrong = _login(ci_daemon, "Alice", ["000000"] * 3)
    assert wrong[-1] == "M"  # not "K": the second factor was not skipped
    assert _login(ci_daemon, "ALICE", [totp_now(secret)])[-1] == "S"
    logins = [r for r in ci_daemon.audit() if r["event"] == "login"]
    assert [(r["user"], r["typed_user"], r["uid"]) for r in logins] == [
        ("alice", "Alice", ALICE.uid),
        ("alice", "ALICE", ALICE.uid),
    ]
    status = ci_daemon.request("status", user="aLiCe")
    assert status["user"] == "alice" and status["state"] == "active"


def test_self_service_is_decided_by_uid_not_by_spelling(ci_daemon: Daemon) -> None:
    """alice may act on `ALICE` (her own account, as NSS spells it), but not on Carol,
    whatever the spelling; the refusal does not say whether the name exists."""
    with ControlAs(ci_daemon.control_socket, ALICE.uid) as alice:
        own = alice.request("enroll_begin", user="ALICE")
        other = alice.request("status", user="carol")
        nobody = alice.request("status", user="nosuchuser")
    assert own["ok"] and own["user"] == "alice", own
    assert other["error"] == "forbidden" and nobody["error"] == "forbidden"
    assert "nosuchuser" in nobody["message"] and CAROL.name not in other["message"]


def test_a_recreated_user_does_not_inherit_the_old_token(ci_daemon: Daemon, nss_ci: NssCi) -> None:
    """alice is deleted and a new alice gets another uid: her old token no longer logs in
    (the login fails closed, saying to contact the administrator), the account is shown as
    stale, and after `mfa forget alice` the new alice is asked to enrol."""
    secret = ci_daemon.enroll("alice")
    nss_ci.set_users([CiUser("alice", 200777, 200001), CAROL])
    frames = _login(ci_daemon, "alice", [totp_now(secret)])
    assert frames[-1] == "F" and "earlier account" in frames[-2]
    record = [r for r in ci_daemon.audit() if r["event"] == "login"][-1]
    assert record["reason"] == "stale_account" and record["uid"] == 200777
    assert "stale" in ci_daemon.request("status", user="alice")
    assert ci_daemon.request("enroll_begin", user="alice")["error"] == "stale_account"
    forgotten = ci_daemon.request("forget", users=["alice"])
    assert forgotten["forgotten"] == [{"user": "alice", "uid": ALICE.uid, "state": "active"}]
    assert ci_daemon.request("status", user="alice")["state"] == "none"
    prompt = _login(ci_daemon, "alice", [])
    assert any("Scan this QR code" in text for text in prompt)
    assert [r["op"] for r in ci_daemon.audit() if r["event"] == "control"][-1] == "forget"


def _free_uid() -> int:
    return max(p.pw_uid for p in pwd.getpwall() if p.pw_uid < 60000) + 1000


def test_a_local_user_recreated_with_another_uid_is_refused_until_forgotten(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """The same with real local users (userdel, useradd with a new uid): the old token is
    refused, `mfa list` marks the account stale, and `forget` refuses an account whose user
    still owns it."""
    user, keeper = make_user(), make_user()
    secret = mfad.enroll(user)
    mfad.enroll(keeper)
    subprocess.run(["userdel", user], check=True)
    subprocess.run(["useradd", "--uid", str(_free_uid()), user], check=True)
    assert _login(mfad, user, [totp_now(secret)])[-1] == "F"
    listed = {r["user"]: r for r in mfad.request("list")["accounts"]}
    assert "stale" in listed[user] and "stale" not in listed[keeper]
    refused = mfad.request("forget", users=[keeper])
    assert refused["forgotten"] == [] and "still exists" in refused["refused"][0]["message"]
    assert mfad.request("status", user=keeper)["state"] == "active"
    assert mfad.request("forget", users=[user])["forgotten"][0]["user"] == user


def test_a_name_nss_cannot_resolve_but_mfad_has_an_account_for_fails_closed(
    ci_daemon: Daemon, nss_ci: NssCi
) -> None:
    """NSS stops resolving alice (a directory out of reach, or alice deleted) while mfad
    holds her account: with mode optional her login is refused as unavailable, never
    skipped, and the trail says why."""
    ci_daemon.restart(mode="optional")
    ci_daemon.enroll("alice")
    nss_ci.set_users([CAROL])
    assert _login(ci_daemon, "alice", [])[-1] == "U"
    assert _login(ci_daemon, "Alice", [])[-1] == "U"
    record = [r for r in ci_daemon.audit() if r["event"] == "login"][-1]
    assert record["outcome"] == "error" and record["reason"] == "name_unresolved"


def test_an_account_stored_under_another_spelling_is_never_passed_over(
    ci_daemon: Daemon,
) -> None:
    """An account written before names were resolved, under `Alice`, is alice's: a login as
    alice (mode optional) is refused, not skipped, until the administrator forgets `Alice`
    (which `forget` allows: the stored spelling is not the canonical one)."""
    ci_daemon.restart(mode="optional")
    ci_daemon.seed("Alice", secrets.token_bytes(20))
    frames = _login(ci_daemon, "alice", [])
    assert frames[-1] == "F" and "earlier account" in frames[-2]
    assert "'Alice'" in ci_daemon.request("status", user="alice")["stale"]
    assert ci_daemon.request("forget", users=["Alice"])["forgotten"][0]["user"] == "Alice"
    assert _login(ci_daemon, "alice", [])[-1] == "K"


def test_forget_takes_names_only(mfad: Daemon) -> None:
    """`forget` refuses a group or `all`: during an NSS outage every user would look deleted."""
    assert mfad.request("forget", all=True)["error"] == "bad_request"


def test_unlock_names_each_user_once_whatever_the_spelling(ci_daemon: Daemon) -> None:
    """`mfa unlock ALICE` for a user who was not locked says so once, under the name given,
    instead of also claiming that `alice` was unlocked."""
    from click.testing import CliRunner

    from mfa_cli.main import cli

    out = CliRunner().invoke(cli, ["--socket", str(ci_daemon.control_socket), "unlock", "ALICE"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["ALICE: was not locked or blocked"]
    assert ci_daemon.request("unlock", users=["ALICE"])["canonical"] == {"ALICE": "alice"}


def test_listing_by_a_group_with_no_members_is_an_empty_list(
    mfad: Daemon, make_group: MakeGroup
) -> None:
    """`mfa list --group G` for a group with no members lists nobody, not an error."""
    answer = mfad.request("list", group=make_group())
    assert answer["ok"] is True and answer["accounts"] == [], answer

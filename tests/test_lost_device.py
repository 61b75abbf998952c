"""A user turns off their own MFA (lost_device.self_disable, under mode: optional).

Through the real `mfa` run as the user against a real mfad, which mails the
administrators through a real SMTP server (tests/smtpserver.py). Off by
default; never for members of a require_groups group; never for anyone else's
account; and the administrators are told.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, MakeUser
from smtpserver import SmtpServer, TestCA, running_smtp, smtp_settings

ADMINS = ["security@example.com"]


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[TestCA, SmtpServer]]:
    ca = TestCA(tmp_path)
    with running_smtp(ca) as server:
        yield ca, server


def optional(ca: TestCA, smtp: SmtpServer, **lost_device: Any) -> dict[str, Any]:
    return {
        "mode": "optional",
        "smtp": smtp_settings(ca, smtp.port),
        "notify": {"admins": ADMINS, "batch_seconds": 0.2},
        "lost_device": lost_device,
    }


def test_a_user_turns_off_their_own_mfa_where_policy_allows(
    mfad: Daemon, smtp: tuple[TestCA, SmtpServer], make_user: MakeUser
) -> None:
    """With lost_device.self_disable under mode optional, `mfa disable` on oneself
    disables the account (token erased), and the administrators get a disable notice
    naming the user as the actor."""
    ca, server = smtp
    mfad.restart(**optional(ca, server, self_disable=True))
    user = make_user()
    mfad.enroll(user)

    done = mfad.mfa_as(user, "disable", user, "--yes")
    assert done.returncode == 0, done.stderr
    status = mfad.request("status", user=user)
    assert (status["state"], status["method"]) == ("disabled", None)
    [message] = server.wait_for(1)
    assert re.search(rf"^disable {user}\r?$", message.body, re.M), message.body
    assert f"by: {user}" in message.body


def test_self_disable_is_refused_by_default_for_others_and_required_groups(
    mfad: Daemon,
    smtp: tuple[TestCA, SmtpServer],
    make_user: MakeUser,
    make_group: Callable[..., str],
) -> None:
    """Off by default (forbidden, exit 4); on, still forbidden for another user's account
    and for a member of a require_groups group; each account stays active."""
    ca, server = smtp
    mfad.restart(**optional(ca, server))
    user, other = make_user(), make_user()
    mfad.enroll(user)
    mfad.enroll(other)
    off = mfad.mfa_as(user, "disable", user, "--yes")
    assert off.returncode == 4, off.stderr
    assert "lost_device.self_disable" in off.stderr

    group = make_group(user)
    mfad.restart(**optional(ca, server, self_disable=True) | {"require_groups": [group]})
    required = mfad.mfa_as(user, "disable", user, "--yes")
    assert required.returncode == 4 and group in required.stderr, required.stderr
    theirs = mfad.mfa_as(user, "disable", other, "--yes")
    assert theirs.returncode == 4, theirs.stderr
    for name in (user, other):
        assert mfad.request("status", user=name)["state"] == "active"
    changes = [r for r in mfad.audit() if r["event"] == "control" and r["op"] == "disable"]
    assert {r["outcome"] for r in changes} == {"refused"}  # nothing for notify to tell

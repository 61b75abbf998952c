"""Codes by email: the `email` method, through a real SMTP server the tests start.

aiosmtpd on 127.0.0.1 with STARTTLS required and a certificate from a CA the
test makes (tests/smtpserver.py), trusted by a real mfad through
``smtp.ca_file``. A user on the email method gets a code mailed at each login
and types it at the prompt, which names the address masked; the code works
once and not after ``email.code_ttl``; wrong codes count and lock as TOTP's do;
a mail server that is down fails the login closed with a message, and one that
is back works without restarting mfad. Addresses a user sets themselves are
confirmed by a mailed code; members of ``email.deny_groups`` cannot switch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SEEN, Daemon, MakeUser, totp_now
from fakeclock import FakeClock
from smtpserver import Received, SmtpServer, TestCA, running_smtp, smtp_settings
from wire import PamWire, start_payload

from mfa_wire.frametypes import Outcome
from mfa_wire.framing import Frame
from mfad import config
from mfad.errors import ConfigError

PASSWORD = "correct horse battery staple 42"
SENT = "A code was sent to "
CODE_LINE = re.compile(r"^ {4}(\d{6,8})\r?$", re.M)
DOWN = "The verification code could not be sent by email right now."


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def smtp(ca: TestCA) -> Iterator[SmtpServer]:
    with running_smtp(ca) as server:
        yield server


def email_config(ca: TestCA, smtp: SmtpServer, **email: Any) -> dict[str, Any]:
    return {
        "smtp": smtp_settings(ca, smtp.port),
        "email": {"enabled": True, "resend_interval": 0, **email},
        "lockout": {"delay": 0, "deny": 5, "source_deny": 100},
    }


@pytest.fixture
def emailing(mfad: Daemon, ca: TestCA, smtp: SmtpServer) -> Daemon:
    """`mfad`, mailing through `smtp`, with codes by email turned on."""
    mfad.restart(**email_config(ca, smtp))
    return mfad


def on_email(daemon: Daemon, user: str, address: str) -> None:
    """An administrator sets `user`'s address (confirmed) and switches them to email."""
    answer = daemon.request("email_set", user=user, address=address)
    assert answer["ok"] and answer["confirmed"], answer
    switched = daemon.request("method", method="email", users=[user])
    assert switched["ok"] and not switched["refused"], switched


def mailed_code(smtp: SmtpServer, count: int) -> str:
    """The code in the `count`th message the server received (remembered as a code)."""
    message: Received = smtp.wait_for(count)[count - 1]
    found = CODE_LINE.search(message.body)
    assert found, message.body
    SEEN["code"].add(found[1])
    return found[1]


def converse(daemon: Daemon, user: str, answer: Callable[[list[Frame]], str]) -> list[Frame]:
    """One login over the PAM socket; each prompt is answered by `answer(frames so far)`."""
    with PamWire(daemon.pam_socket, timeout=20) as wire:
        wire.send("S", start_payload(user, service="sshd", rhost="192.0.2.7"))
        frames: list[Frame] = []
        while True:
            frame = wire.recv()
            frames.append(frame)
            if frame.type == "R":
                return frames
            if frame.type in "Pp":
                wire.send("A", answer(frames))


def texts(frames: list[Frame]) -> str:
    return "\n".join(f.payload for f in frames)


def result(frames: list[Frame]) -> str:
    """The login's outcome as mfad names it ("success", "failure", "maxtries"...)."""
    return Outcome(frames[-1].payload).name.lower()


def records(daemon: Daemon, event: str, user: str) -> list[dict[str, Any]]:
    return [r for r in daemon.audit() if r["event"] == event and r.get("user") == user]


def test_mailed_code_logs_in_once(emailing: Daemon, smtp: SmtpServer, make_user: MakeUser) -> None:
    """The code mailed at a login lets the user in, the prompt names the address masked,
    and the same code typed again at a later login is refused."""
    user = make_user()
    on_email(emailing, user, "mallory.smith@example.com")

    first = converse(emailing, user, lambda _: mailed_code(smtp, 1))
    assert result(first) == "success", texts(first)
    assert f"{SENT}m\u2022\u2022\u2022@example.com." in texts(first)
    assert "mallory" not in texts(first)
    [message] = smtp.wait_for(1)
    assert message.recipients == ["mallory.smith@example.com"]
    assert smtp.tls_used == [True]

    again = converse(emailing, user, lambda _: mailed_code(smtp, 1))
    assert result(again) != "success", texts(again)
    [login] = records(emailing, "login", user)[-1:]
    assert login["outcome"] == "failure"
    accepted = [r for r in records(emailing, "login", user) if r["outcome"] == "success"]
    assert accepted[0]["method"] == "email"


def test_code_stands_within_resend_interval_and_works_once(
    emailing: Daemon, ca: TestCA, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """A second login within email.resend_interval mails nothing (audited as too soon) and
    takes the code already mailed; once used, that code is refused at a third login."""
    emailing.restart(**email_config(ca, smtp, resend_interval=600))
    user = make_user()
    on_email(emailing, user, "ann@example.com")
    seen: list[str] = []

    def remember_nothing(_: list[Frame]) -> str:
        seen.append(mailed_code(smtp, 1))
        return "000000" if seen[0] != "000000" else "111111"

    converse(emailing, user, remember_nothing)  # three wrong answers; the code is unused
    second = converse(emailing, user, lambda _: mailed_code(smtp, 1))
    assert result(second) == "success", texts(second)
    assert "moments ago" in texts(second)
    third = converse(emailing, user, lambda _: mailed_code(smtp, 1))
    assert result(third) != "success"
    assert len(smtp.received()) == 1
    throttled = [r for r in records(emailing, "email_code", user) if r["outcome"] == "refused"]
    assert [r["reason"] for r in throttled] == ["resend_too_soon", "resend_too_soon"]


def test_code_after_its_ttl_is_refused(
    mfad: Daemon, ca: TestCA, smtp: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> None:
    """A code typed after email.code_ttl has passed on mfad's clock is refused."""
    clock = FakeClock(tmp_path / "faketime", start=time.time())  # TLS certificates: real now
    clock.attach(mfad, **email_config(ca, smtp, code_ttl=60))
    user = make_user()
    on_email(mfad, user, "late@example.com")

    def after_ttl(_: list[Frame]) -> str:
        code = mailed_code(smtp, 1)
        clock.advance(61)
        return code

    frames = converse(mfad, user, after_ttl)
    assert result(frames) != "success", texts(frames)
    [attempt, *_] = records(mfad, "attempt", user)
    assert attempt["reason"] == "incorrect_code"


def test_wrong_codes_lock_as_totp_does(
    emailing: Daemon, ca: TestCA, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """Wrong answers to a mailed code count in the guard: lockout.deny of them lock the
    account, and then even the right code is refused unseen."""
    emailing.restart(**email_config(ca, smtp) | {"lockout": {"delay": 0, "deny": 3}})
    user = make_user()
    on_email(emailing, user, "bob@example.com")
    converse(emailing, user, lambda frames: "123456" if len(frames) < 9 else "")
    locked = records(emailing, "lock_set", user)
    assert locked, records(emailing, "attempt", user)
    frames = converse(emailing, user, lambda _: mailed_code(smtp, len(smtp.received())))
    assert result(frames) != "success"
    assert "locked" in texts(frames).lower()


def test_mail_server_down_fails_closed_then_recovers(
    emailing: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """With the mail server stopped the login is refused with a message, within the
    smtp.timeout, and recorded; started again, the next login works, same mfad."""
    user = make_user()
    on_email(emailing, user, "carol@example.com")
    smtp.stop()
    began = time.monotonic()
    frames = converse(emailing, user, lambda _: "")
    assert time.monotonic() - began < 10  # pam_mfa.so's default timeout= per frame
    assert result(frames) == "failure"
    assert DOWN in texts(frames)
    [failed] = records(emailing, "email_code", user)
    assert failed["outcome"] == "error" and failed["reason"] == "email_unavailable"
    assert "127.0.0.1" in failed["message"]
    [refused] = records(emailing, "login", user)
    assert (refused["outcome"], refused["reason"]) == ("error", "email_unavailable")
    [asked] = records(emailing, "challenge", user)[:1]
    assert asked["method"] == "email"

    smtp.start()
    frames = converse(emailing, user, lambda _: mailed_code(smtp, 1))
    assert result(frames) == "success", texts(frames)


def test_self_service_address_needs_the_mailed_code(
    emailing: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """A user sets their own address: it is unconfirmed, so `mfa method email` is
    refused, until `mfa email --confirm` is given the code mailed to it."""
    user = make_user()
    set_it = emailing.mfa_as(user, "email", "dana@example.com")
    assert set_it.returncode == 0, set_it.stderr
    assert "a code was mailed to d\u2022\u2022\u2022@example.com" in set_it.stdout
    refused = emailing.mfa_as(user, "method", "email")
    assert refused.returncode == 8, refused.stdout + refused.stderr
    assert "no confirmed address" in refused.stderr

    wrong = emailing.mfa_as(user, "email", "--confirm", input="000000\n")
    assert wrong.returncode != 0
    confirmed = emailing.mfa_as(user, "email", "--confirm", input=mailed_code(smtp, 1) + "\n")
    assert confirmed.returncode == 0, confirmed.stderr
    switched = emailing.mfa_as(user, "method", "email")
    assert switched.returncode == 0, switched.stderr
    status = emailing.mfa_as(user, "status")
    assert "email, to d\u2022\u2022\u2022@example.com" in status.stdout, status.stdout
    assert "dana@" not in status.stdout


def test_a_user_on_email_cannot_send_their_codes_elsewhere(
    emailing: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """Once a user's login codes go to a confirmed address, whoever has the user's shell
    cannot point them at another (refused, exit 4, audited): as with a token, only an
    administrator changes it."""
    user = make_user()
    on_email(emailing, user, "erin@example.com")
    moved = emailing.mfa_as(user, "email", "mallory@example.org")
    assert moved.returncode == 4, moved.stdout + moved.stderr
    assert "only an administrator may change" in moved.stderr
    back = emailing.mfa_as(user, "method", "totp")  # then enrol an app of their own
    assert back.returncode == 4, back.stdout + back.stderr
    assert emailing.request("status", user=user)["method"] == "email"
    assert emailing.request("status", user=user)["address"].startswith("e•••@")
    refusals = [
        r for r in emailing.audit() if r["event"] == "control" and r["outcome"] == "refused"
    ]
    assert [(r["op"], r["user"]) for r in refusals] == [("email_set", user), ("method", user)]
    assert emailing.request("email_set", user=user, address="erin2@example.com")["ok"]


def test_a_user_with_an_app_cannot_swap_it_for_a_mailbox_of_their_choosing(
    emailing: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """An active authenticator user's shell cannot set an address, confirm it from its own
    mailbox and switch the account to email (review of 2026-11-30): each step past the
    first factor is an administrator's; the token stays and still logs in."""
    user = make_user()
    secret = emailing.enroll(user)
    for args in (["email", "mallory@example.org"], ["method", "email"]):
        refused = emailing.mfa_as(user, *args)
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert "has a second factor already" in refused.stderr
    assert smtp.messages == []
    status = emailing.request("status", user=user)
    assert status["method"] == "totp" and status["state"] == "active"
    frames = converse(emailing, user, lambda _: totp_now(secret))
    assert result(frames) == "success"


def test_totp_only_group_cannot_switch_to_email(
    emailing: Daemon,
    ca: TestCA,
    smtp: SmtpServer,
    make_user: MakeUser,
    make_group: Callable[..., str],
) -> None:
    """A member of a group in email.deny_groups is refused the email method, even by an
    administrator; the refusal is recorded."""
    user = make_user()
    group = make_group(user)
    emailing.restart(**email_config(ca, smtp, deny_groups=[group]))
    emailing.request("email_set", user=user, address="eve@example.com")
    answer = emailing.request("method", method="email", users=[user])
    assert answer["ok"] and not answer["changed"], answer
    assert group in answer["refused"][0]["message"]
    [refusal] = [r for r in records(emailing, "control", user) if r["outcome"] == "refused"]
    assert refusal["op"] == "method"


def test_list_shows_method_and_masked_address(
    emailing: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """`mfa list` has METHOD and ADDRESS columns with the method and the masked address;
    `mfa status --json` carries them too; the address itself is in neither."""
    user = make_user()
    on_email(emailing, user, "frank@example.com")
    table = emailing.mfa_as("root", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert "METHOD" in header and "ADDRESS" in header
    [row] = [r for r in rows if r.split()[0] == user]
    assert row.split()[1:4] == ["active", "email", "f\u2022\u2022\u2022@example.com"]
    assert "frank@" not in table.stdout
    status = emailing.request("status", user=user)
    assert (status["method"], status["address"], status["address_confirmed"]) == (
        "email",
        "f\u2022\u2022\u2022@example.com",
        True,
    )


def test_the_email_settings_are_checked() -> None:
    """Codes by email need a mail server; a mail timeout at pam_mfa.so's own is a warning;
    a domain that is no domain is refused with its line."""
    with pytest.raises(ConfigError, match=re.escape("line 2: email.enabled: needs smtp.host")):
        config.parse("email:\n  enabled: true\n")
    with pytest.raises(
        ConfigError, match=re.escape("line 2: lost_device.email_recovery: needs smtp.host")
    ):
        config.parse("lost_device:\n  email_recovery: true\n")
    with pytest.raises(
        ConfigError, match=re.escape("email.domains: must be a list of mail domains")
    ):
        config.parse("email:\n  domains: ['@example.com']\n")
    slow = config.parse("smtp: {host: mail.example.com, timeout: 12}\nemail: {enabled: true}\n")
    assert any("smtp.timeout (12s)" in w for w in config.warnings(slow))
    assert not any("smtp.timeout" in w for w in config.warnings(config.parse("")))

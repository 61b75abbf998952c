"""Codes by email and a lost device, over real SSH: OpenSSH's sshd and client, pam_unix
then pam_mfa.so, a real mfad, and a real SMTP server (aiosmtpd, STARTTLS, a test CA).

The user reads the code from the message the server received, as a person reads
their mail. With lost_device.email_recovery on, the code prompt offers a
recovery code by email: typing `email` there mails a one-time code, which lets
the user in once and leaves the account suspended; with lost_device.self_enrol
the user then enrols a new authenticator with `mfa enroll` and is active again.
The administrators get one message for each of those steps.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SEEN, Daemon, MakeUser, totp_from_uri, totp_now
from smtpserver import Received, SmtpServer, TestCA, running_smtp, smtp_settings
from sshd import CODE_PROMPT, CONTINUE_PROMPT, PASSWORD_PROMPT, PrivateSshd

pytest_plugins = ["sshd"]

pytestmark = pytest.mark.ssh

PASSWORD = "correct horse battery staple 42"
COMMAND = "echo logged-in-as-$(id -un)"
ADMINS = ["security@example.com"]
CODE_LINE = re.compile(r"^ {4}(\d{6,8})\r?$", re.M)
HINT = "Lost your authenticator? Type `email`"
INCORRECT = "Incorrect verification code."


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[TestCA, SmtpServer]]:
    ca = TestCA(tmp_path)
    with running_smtp(ca) as server:
        yield ca, server


def mail_config(ca: TestCA, smtp: SmtpServer, **lost_device: bool) -> dict[str, Any]:
    return {
        "smtp": smtp_settings(ca, smtp.port),
        "email": {"enabled": True, "resend_interval": 0},
        "notify": {"admins": ADMINS, "batch_seconds": 0.2},
        "lost_device": lost_device,
    }


def to_user(smtp: SmtpServer) -> list[Received]:
    return [m for m in smtp.received() if m.recipients != ADMINS]


def to_admins(smtp: SmtpServer) -> list[Received]:
    return [m for m in smtp.received() if m.recipients == ADMINS]


def wait(found: Callable[[], list[Received]], count: int) -> list[Received]:
    deadline = time.monotonic() + 20
    while len(found()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(found()) >= count, [m.body for m in found()]
    return found()


def told(smtp: SmtpServer, user: str) -> list[str]:
    """The notices about `user` in every message to the administrators, by kind."""
    return [k for m in to_admins(smtp) for k in re.findall(rf"^(\w+) {user}\r?$", m.body, re.M)]


def mailed_code(smtp: SmtpServer, count: int) -> Callable[[str], str]:
    """An answer for the prompt: the code in the `count`th message to the user, read when
    the prompt shows (remembered as a code: no log may hold it)."""

    def read(_screen: str) -> str:
        message = wait(lambda: to_user(smtp), count)[count - 1]
        found = CODE_LINE.search(message.body)
        assert found, message.body
        SEEN["code"].add(found[1])
        return found[1]

    return read


def test_email_method_logs_in_over_ssh_once(
    mfa_sshd: PrivateSshd,
    mfad: Daemon,
    smtp: tuple[TestCA, SmtpServer],
    make_user: MakeUser,
) -> None:
    """A user on the email method types the password, is told a code was mailed to their
    masked address, types the code from the mail, and gets a shell; the same code at the
    next login is refused."""
    ca, server = smtp
    mfad.restart(**mail_config(ca, server))
    user = make_user(PASSWORD)
    mfad.request("email_set", user=user, address="pat@example.com")
    assert mfad.request("method", method="email", users=[user])["changed"]

    code = mailed_code(server, 1)
    login = mfa_sshd.login(user, PASSWORD, [code], COMMAND)
    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert f"logged-in-as-{user}" in login.output
    assert "A code was sent to p\u2022\u2022\u2022@example.com." in login.output
    assert login.prompts == [PASSWORD_PROMPT, CODE_PROMPT]

    again = mfa_sshd.login(user, PASSWORD, [code] * 3, COMMAND)
    assert f"logged-in-as-{user}" not in again.output
    assert INCORRECT in again.output


def test_lost_device_recovery_by_email_then_enrol_again(
    mfa_sshd: PrivateSshd,
    mfad: Daemon,
    smtp: tuple[TestCA, SmtpServer],
    make_user: MakeUser,
) -> None:
    """A user who lost their phone types `email` at the code prompt, logs in once with the
    mailed recovery code, is suspended (the next login asks for no code), enrols a new
    authenticator with `mfa enroll` and is active again; the administrators got one
    message for each step, none holding a code."""
    ca, server = smtp
    mfad.restart(**mail_config(ca, server, email_recovery=True, self_enrol=True))
    user = make_user(PASSWORD)
    mfad.enroll(user)
    mfad.request("email_set", user=user, address="quinn@example.com")

    login = mfa_sshd.login(user, PASSWORD, ["email", mailed_code(server, 1)], COMMAND)
    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert HINT in login.output
    assert "A one-time recovery code was sent to q\u2022\u2022\u2022@example.com" in login.output
    assert CONTINUE_PROMPT in login.prompts
    assert mfad.request("status", user=user)["state"] == "suspended"

    skipped = mfa_sshd.login(user, PASSWORD, [], COMMAND)
    assert skipped.prompts == [PASSWORD_PROMPT], skipped.output
    assert f"logged-in-as-{user}" in skipped.output

    begun = mfad.mfa_as(user, "enroll", "--json", input="")
    assert begun.returncode == 0, begun.stderr
    uri = json.loads(begun.stdout)["uri"]
    otp = totp_from_uri(uri)
    code = otp.at(time.time())
    SEEN["code"].add(code)
    confirmed = mfad.mfa_as(user, "enroll", "--confirm", input=code + "\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert mfad.request("status", user=user)["state"] == "active"

    deadline = time.monotonic() + 20
    while len(told(server, user)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(told(server, user)) == ["email_recovery", "self_enrol", "suspend"]
    notices = to_admins(server)
    assert len(notices) <= 3  # steps within one notify.batch_seconds share a message
    for message in notices:
        assert not any(c in message.body for c in SEEN["code"] if len(c) >= 6)
    records = [r for r in mfad.audit() if r.get("user") == user and r["event"] == "login"]
    assert records[0]["method"] == "email_recovery"


def test_with_the_policy_off_the_prompt_offers_nothing(
    mfa_sshd: PrivateSshd,
    mfad: Daemon,
    smtp: tuple[TestCA, SmtpServer],
    make_user: MakeUser,
) -> None:
    """lost_device.email_recovery off (the default): no offer at the prompt, and `email`
    typed there is only a wrong code; nothing is mailed."""
    ca, server = smtp
    mfad.restart(**mail_config(ca, server))
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    mfad.request("email_set", user=user, address="rob@example.com")

    login = mfa_sshd.login(user, PASSWORD, ["email", lambda _s: totp_now(secret)], COMMAND)
    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert HINT not in login.output
    assert INCORRECT in login.output
    assert to_user(server) == []


def test_mail_server_down_refuses_over_ssh_with_the_message(
    mfa_sshd: PrivateSshd,
    mfad: Daemon,
    smtp: tuple[TestCA, SmtpServer],
    make_user: MakeUser,
) -> None:
    """With the mail server stopped, an email user's SSH login is refused and they read
    why; once it is started again the next login works, with the same mfad."""
    ca, server = smtp
    mfad.restart(**mail_config(ca, server))
    user = make_user(PASSWORD)
    mfad.request("email_set", user=user, address="sam@example.com")
    mfad.request("method", method="email", users=[user])
    pid = mfad.proc.pid if mfad.proc else None

    server.stop()
    refused = mfa_sshd.login(user, PASSWORD, [], COMMAND)
    assert f"logged-in-as-{user}" not in refused.output
    assert "could not be sent by email right now" in refused.output, refused.output
    assert CODE_PROMPT not in refused.prompts

    server.start()
    login = mfa_sshd.login(user, PASSWORD, [mailed_code(server, 1)], COMMAND)
    assert login.exit_status == 0, login.output + mfa_sshd.logs()
    assert mfad.proc is not None and mfad.proc.pid == pid

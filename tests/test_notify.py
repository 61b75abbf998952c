"""Mail to the administrators, through a real SMTP server the tests start.

aiosmtpd on 127.0.0.1 with STARTTLS required and a certificate from a CA the
test makes (tests/smtpserver.py); a real mfad trusts that CA through
``smtp.ca_file``. Each notice the administrators get by default is one message
with its facts; a flood of wrong answers is one message (or one per batch
window); no message holds a code, key or recovery code; a mail server that is
down, or that shows a certificate the CA did not sign, never holds up a login,
is recorded, and the notice goes out once the server is back, with no restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml
from conftest import SEEN, Daemon, MakeUser, running_daemon, totp_now
from smtpserver import Received, SmtpServer, TestCA, running_smtp, smtp_settings
from wire import PamWire

from mfa_wire.events import Event, Outcome
from mfad import config
from mfad.audit import AuditLog
from mfad.errors import ConfigError
from mfad.mailer import Mailer
from mfad.notify import Notifier

ADMINS = ["security@example.com", "oncall@example.com"]
BATCH = 0.3  # seconds: a notice goes out this long after its first fact
DIGITS = re.compile(r"\d{6,}")
TYPED: set[str] = set()  # wrong codes the tests typed: no message may hold those either


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def smtp(ca: TestCA) -> Iterator[SmtpServer]:
    """The administrators' mail server: STARTTLS required, certificate from `ca`."""
    with running_smtp(ca) as server:
        yield server


def mail_config(ca: TestCA, port: int, **notify: Any) -> dict[str, Any]:
    return {
        "smtp": smtp_settings(ca, port, timeout=5),
        "notify": {"admins": ADMINS, "batch_seconds": BATCH, **notify},
    }


@pytest.fixture
def notifying(ca: TestCA, smtp: SmtpServer) -> Iterator[Daemon]:
    """A daemon that mails ADMINS through `smtp`; two wrong answers lock an account."""
    with running_daemon() as daemon:
        daemon.restart(
            lockout={"delay": 0, "deny": 2, "lifetime_deny": 4, "source_deny": 100},
            **mail_config(ca, smtp.port, failure_burst=50),
        )
        yield daemon


def wrong_code(secret: str) -> str:
    """A code right for no step near now; remembered (TYPED) as one a user typed."""
    otp = pyotp.TOTP(secret)
    near = {otp.at(time.time() + 30 * k) for k in range(-25, 26)}
    code = next(c for c in (f"{n:06d}" for n in range(1000000)) if c not in near)
    TYPED.add(code)
    return code


def login(daemon: Daemon, user: str, answers: list[str]) -> str:
    with PamWire(daemon.pam_socket) as wire:
        return wire.login(user, answers, service="sshd", rhost="192.0.2.7")[-1].payload


def records(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return [r for r in daemon.audit() if r["event"] == event]


def wait_for_record(
    daemon: Daemon, event: str, count: int = 1, timeout: float = 20
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(daemon, event)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {event} records: {records(daemon, event)}")


def facts(message: Received) -> list[dict[str, str]]:
    """The facts a notice lists: a head line "KIND USER" and indented "label: text" lines."""
    found: list[dict[str, str]] = []
    for line in message.body.splitlines():
        head = re.fullmatch(r"(\w+) (\S+)", line)
        if head:
            found.append({"kind": head[1], "user": head[2]})
        elif line.startswith("  ") and found:
            label, _, text = line.strip().partition(": ")
            found[-1][label] = text
    return found


def assert_nothing_secret(messages: list[Received]) -> None:
    """No key, recovery code or code the suite used (or a test typed) is in any message."""
    for message in messages:
        for text in (message.raw, message.subject, message.body):
            for kind in ("secret", "recovery code"):
                assert not [s for s in SEEN[kind] if s in text], (kind, text)
            codes = SEEN["code"] | TYPED
            assert not [run for run in DIGITS.findall(text) if run in codes], text


def test_each_notice_is_one_message_with_its_facts(
    notifying: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """suspend, reset, exempt, disable (by root over the control socket), an account lock
    (two wrong codes) and the lifetime cap (root, spared the lock, after four): each is
    one message to both administrators, over TLS, listing that one fact with who, what,
    when, which host and by whom; a resume (not a default notice) sends nothing; every
    message is recorded as sent, and none holds a code or a key."""
    daemon = notifying
    alice, bob = make_user(), make_user()
    daemon.enroll(alice)
    bob_secret = daemon.enroll(bob)
    root_secret = daemon.enroll("root")

    steps: list[tuple[Callable[[], object], str, str]] = [
        (lambda: daemon.request("suspend", user=alice), "suspend", alice),
        (lambda: daemon.request("resume", user=alice), "", alice),  # not a default notice
        (lambda: daemon.request("reset", user=alice), "reset", alice),
        (lambda: daemon.request("exempt", user=alice, reason="break-glass"), "exempt", alice),
        (lambda: daemon.request("disable", user=alice), "disable", alice),
        (lambda: login(daemon, bob, [wrong_code(bob_secret)] * 2), "lock", bob),
        (lambda: login(daemon, "root", [wrong_code(root_secret)] * 3), "", "root"),
        (lambda: login(daemon, "root", [wrong_code(root_secret)]), "lifetime_cap", "root"),
    ]
    # and one more: windows go out in order, so anything sent late comes before it
    steps.append((lambda: daemon.request("disable", user=bob), "disable", bob))
    expected = 0
    for act, kind, _user in steps:
        act()
        if kind:
            expected += 1
            smtp.wait_for(expected)

    messages = smtp.received()
    assert len(messages) == expected == 7
    listed = [facts(m) for m in messages]
    assert [[(f["kind"], f["user"]) for f in fs] for fs in listed] == [
        [(kind, user)] for _act, kind, user in steps if kind
    ]
    listed.pop()
    by_kind = {fs[0]["kind"]: fs[0] for fs in listed}
    host = daemon.audit()[0]["host"]
    assert all(f["host"] == host and f["time"].endswith("+00:00") for f in by_kind.values())
    assert by_kind["suspend"]["by"] == "root (uid 0)"
    assert by_kind["suspend"]["change"] == "active -> suspended"
    assert by_kind["reset"]["change"] == "active -> pending"
    assert by_kind["exempt"]["reason"] == "break-glass"
    assert by_kind["disable"]["change"] == "exempt -> disabled"
    assert by_kind["lock"]["after"] == "2 wrong answers"
    assert by_kind["lock"]["remote host"] == "192.0.2.7"
    assert by_kind["lock"]["service"] == "sshd"
    assert by_kind["lifetime_cap"]["locked until"] == "an administrator unlocks it"
    for message in messages:
        assert sorted(message.recipients) == sorted(ADMINS)
        assert message.message["To"] == ", ".join(ADMINS)
        assert message.subject.startswith(f"[mfad {host}] ")
    assert smtp.tls_used == [True] * len(messages)
    sent = records(daemon, "notice_sent")
    assert [(r["facts"], r["attempt"], r["to"]) for r in sent] == [(1, 1, ADMINS)] * 7
    assert_nothing_secret(messages)


def test_a_flood_of_wrong_answers_is_one_message_per_window(
    ca: TestCA, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """100 wrong codes for one user, as fast as logins go: one fact, "failures USER",
    counting the wrong answers with the remote host and service, in one message (or one
    per batch window if the flood outlasts one); no message holds any of the codes."""
    batch = 2.0
    with running_daemon() as daemon:
        daemon.restart(
            login={"max_attempts": 10},
            lockout={"delay": 0, "deny": 1000, "lifetime_deny": 0, "source_deny": 1000},
            **mail_config(ca, smtp.port, batch_seconds=batch, failure_burst=10),
        )
        user = make_user()
        secret = daemon.enroll(user)
        began = time.monotonic()
        for _ in range(10):
            assert login(daemon, user, [wrong_code(secret)] * 10) == "M"
        flood = time.monotonic() - began
        wait_for_record(daemon, "notice_sent")
        time.sleep(max(0.0, began + flood + batch + 1 - time.monotonic()))  # the last window
        windows = 1 + int(flood // batch)
        messages = smtp.received()
        assert 1 <= len(messages) <= windows
        told = [f for m in messages for f in facts(m)]
        assert {(f["kind"], f["user"]) for f in told} == {("failures", user)}
        counted = sum(int(f["answers"].split()[0]) for f in told)
        assert 100 - 9 <= counted <= 100  # fewer than failure_burst may be left untold
        if len(messages) == 1:
            assert told[0]["answers"] == "100 wrong"
        assert all(f["remote hosts"] == "192.0.2.7" and f["services"] == "sshd" for f in told)
        assert_nothing_secret(messages)


def test_a_bulk_change_is_one_message_that_lists_a_hundred_and_counts_the_rest(
    ca: TestCA, smtp: SmtpServer, tmp_path: Path
) -> None:
    """150 disables recorded in one window (what `mfa disable --group` of a large group
    writes) through a real audit log, notifier, mailer and server: one message, listing
    the first 100 and counting the other 50, recorded as one notice of 150 facts."""
    cfg = config.parse(yaml.safe_dump(mail_config(ca, smtp.port)))

    async def bulk() -> None:
        notifier = Notifier(lambda: cfg, Mailer(lambda: cfg.smtp))
        audit = AuditLog(tmp_path / "audit.jsonl", to_stderr=False, observer=notifier.observe)
        await audit.open()
        notifier.start(audit)
        for n in range(150):
            await audit.record(
                Event.CONTROL,
                outcome=Outcome.SUCCESS,
                op="disable",
                user=f"user{n:03d}",
                actor="root",
                actor_uid=0,
                before="active",
                after="disabled",
            )
        await asyncio.to_thread(smtp.wait_for, 1)
        await notifier.close()
        await audit.close()

    asyncio.run(bulk())
    [message] = smtp.received()
    listed = facts(message)
    assert [f["user"] for f in listed] == [f"user{n:03d}" for n in range(100)]
    assert "and 50 more not listed here (50 disable)." in message.body
    assert (
        message.subject.startswith("[mfad ") and "150 notices: disable user000" in message.subject
    )
    log = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["facts"] for r in log if r["event"] == "notice_sent"] == [150]


def test_mail_server_down_logins_go_on_the_failure_is_recorded_and_the_notice_follows(
    notifying: Daemon, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """With the mail server stopped, a disable is made at once and logins succeed
    while the notice cannot go; each failed try is recorded (`notice_failed`, saying
    which server and what to check); when the server is back, the same mfad (not
    restarted) sends one message with the notice."""
    daemon = notifying
    pid = daemon.proc.pid if daemon.proc else None
    alice, bob = make_user(), make_user()
    daemon.enroll(alice)
    secret = daemon.enroll(bob)
    smtp.stop()

    assert daemon.request("disable", user=alice)["changed"]
    failed = wait_for_record(daemon, "notice_failed")
    assert login(daemon, bob, [totp_now(secret)]) == "S"  # not held up by the notice
    first = failed[0]
    assert first["outcome"] == "error" and first["attempt"] == 1 and first["retry_in_s"] > 0
    assert f"cannot talk to the SMTP server 127.0.0.1:{smtp.port}" in first["reason"]
    assert "check smtp.host, smtp.port" in first["reason"]

    smtp.start()
    [message] = smtp.wait_for(1)
    assert [(f["kind"], f["user"]) for f in facts(message)] == [("disable", alice)]
    [sent] = wait_for_record(daemon, "notice_sent")
    assert sent["attempt"] == len(records(daemon, "notice_failed")) + 1 >= 2
    assert daemon.proc is not None and daemon.proc.pid == pid
    assert_nothing_secret([message])


def test_a_mail_server_that_never_answers_holds_up_nothing(ca: TestCA, make_user: MakeUser) -> None:
    """A server that takes the connection and then says nothing: a login made while
    mfad waits for it succeeds (its record comes before the failure's), and the try
    ends at smtp.timeout, recorded with what to check."""
    with running_daemon() as daemon, socket.socket() as frozen:
        # the kernel completes the handshake; no one speaks (closed first at the end, so
        # the last try at stop is refused at once)
        frozen.bind(("127.0.0.1", 0))
        frozen.listen()
        cfg = mail_config(ca, frozen.getsockname()[1])
        cfg["smtp"]["timeout"] = 2
        daemon.restart(**cfg)
        alice, bob = make_user(), make_user()
        daemon.enroll(alice)
        secret = daemon.enroll(bob)
        daemon.request("disable", user=alice)
        time.sleep(BATCH + 0.5)  # the window has closed: mfad is waiting for the server
        assert login(daemon, bob, [totp_now(secret)]) == "S"
        [failed, *_] = wait_for_record(daemon, "notice_failed")
        [logged] = [r for r in records(daemon, "login") if r["user"] == bob]
    assert logged["seq"] < failed["seq"]
    assert "did not complete the exchange within smtp.timeout (2 s)" in failed["reason"]


def test_what_is_noted_is_sent_when_mfad_stops(
    ca: TestCA, smtp: SmtpServer, make_user: MakeUser
) -> None:
    """A notice still in its batch window when mfad is stopped is sent on the way out."""
    with running_daemon() as daemon:
        daemon.restart(**mail_config(ca, smtp.port, batch_seconds=3600))
        alice = make_user()
        daemon.enroll(alice)
        daemon.request("suspend", user=alice)
        assert smtp.received() == []
        daemon.stop()
        [message] = smtp.received()
        assert [(f["kind"], f["user"]) for f in facts(message)] == [("suspend", alice)]
        assert records(daemon, "notice_sent")[-1]["seq"] > records(daemon, "daemon_stop")[0]["seq"]


def test_a_reload_changes_who_is_told_and_what(
    notifying: Daemon, smtp: SmtpServer, ca: TestCA, make_user: MakeUser
) -> None:
    """SIGHUP with new `notify.admins` and `notify.events` (require added): the next notice
    goes to the new address only, and a require, off before, is now told."""
    daemon = notifying
    alice = make_user()
    cfg = mail_config(ca, smtp.port, events=["require"])
    cfg["notify"]["admins"] = ["new-admin@example.com"]
    daemon.write_config(**cfg)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_record(daemon, "daemon_reload")
    daemon.request("require", user=alice)
    [message] = smtp.wait_for(1)
    assert message.recipients == ["new-admin@example.com"]
    assert [(f["kind"], f["user"]) for f in facts(message)] == [("require", alice)]


def test_a_server_certificate_the_ca_did_not_sign_is_refused(
    notifying: Daemon, smtp: SmtpServer, ca: TestCA, tmp_path: Path, make_user: MakeUser
) -> None:
    """A server on the configured port whose certificate another CA signed (a machine in
    the middle) gets no message: the try is recorded as failed, naming the CA file; the
    real server, back on its port, gets the notice."""
    daemon = notifying
    rogue = TestCA(tmp_path, "rogue CA")
    smtp.stop()
    impostor = SmtpServer(*rogue.issue("impostor"), port=smtp.port).start()
    try:
        alice = make_user()
        daemon.enroll(alice)
        daemon.request("suspend", user=alice)
        failed = wait_for_record(daemon, "notice_failed")
    finally:
        impostor.stop()
    assert impostor.received() == []
    reason = failed[0]["reason"]
    assert "presented a certificate that does not verify against smtp.ca_file" in reason
    assert str(ca.path) in reason

    smtp.start()
    [message] = smtp.wait_for(1)
    assert [(f["kind"], f["user"]) for f in facts(message)] == [("suspend", alice)]


def test_a_server_that_offers_no_starttls_gets_nothing_in_clear_text(
    notifying: Daemon, smtp: SmtpServer, ca: TestCA, make_user: MakeUser
) -> None:
    """STARTTLS left out of the server's answer (a plain server, or a machine in between
    stripping it): mfad sends nothing in clear text and records why."""
    smtp.stop()
    stripped = SmtpServer(*ca.issue("plain"), plain=True, port=smtp.port).start()
    try:
        alice = make_user()
        daemon = notifying
        daemon.enroll(alice)
        daemon.request("suspend", user=alice)
        failed = wait_for_record(daemon, "notice_failed")
    finally:
        stripped.stop()
    assert stripped.received() == []
    assert "does not offer STARTTLS" in failed[0]["reason"]


# aiosmtpd does not count implicit TLS as TLS for AUTH (tests/smtpserver.py) and says so
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls_with_a_login_from_a_password_file(
    ca: TestCA, make_user: MakeUser, tmp_path: Path
) -> None:
    """`smtp.tls: implicit` and AUTH with `smtp.password_file` (0600): the server sees the
    login and gets the notice; the password is in no message, no audit record and no
    log line."""
    password = "correct horse battery staple"
    secret_file = tmp_path / "smtp.password"
    secret_file.write_text(password + "\n")
    secret_file.chmod(0o600)
    cert, key = ca.issue("smtps")
    server = SmtpServer(cert, key, implicit=True, auth=("mfad", password)).start()
    try:
        with running_daemon() as daemon:
            cfg = mail_config(ca, server.port)
            cfg["smtp"].update(
                tls="implicit", username="mfad", password_file=str(secret_file), port=server.port
            )
            daemon.restart(**cfg)
            alice = make_user()
            daemon.enroll(alice)
            daemon.request("suspend", user=alice)
            [message] = server.wait_for(1)
            wait_for_record(daemon, "notice_sent")
            assert server.logins == ["mfad"]
            assert password not in message.raw
            assert password not in daemon.audit_path.read_text()
            assert password not in daemon.stderr()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            "smtp:\n  host: mail.example.com\n  tls: none\n",
            "line 3: smtp.tls: none is allowed only for a server on this machine",
        ),
        (
            "notify:\n  admins: [root@example.com]\n",
            "line 2: notify.admins: needs smtp.host",
        ),
        (
            "smtp:\n  host: mail.example.com\n  username: mfad\n",
            "line 3: smtp.username: smtp.username and smtp.password_file go together",
        ),
        (
            "notify:\n  admins: ['root@example.com\\nBcc: x@evil.example']\n",
            "line 2: notify.admins: must be an email address",
        ),
        (
            "notify:\n  events: [disable, lockd]\n",
            "line 2: notify.events: unknown notice 'lockd'",
        ),
        ("smtp:\n  from: 'mfad'\n", "line 2: smtp.from: must be an email address"),
        ("notify:\n  batch_seconds: 0\n", "line 2: notify.batch_seconds: must be a number"),
    ],
)
def test_mail_settings_are_checked_with_line_and_key(text: str, complaint: str) -> None:
    """Clear text to a server elsewhere, notices with no server, AUTH with half its
    settings, an address with a header in it, an unknown notice: each refused, naming
    the line and the key."""
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "mfad.yaml")
    assert f"mfad.yaml {complaint}" in str(caught.value)


def test_clear_text_to_a_local_mail_server_is_allowed() -> None:
    """`smtp.tls: none` is accepted for localhost and the loopback addresses: a local MTA
    relays onward with TLS of its own."""
    for host in ("localhost", "127.0.0.1", "::1"):
        parsed = config.parse(f"smtp:\n  host: '{host}'\n  tls: none\n  port: 25\n")
        assert (parsed.smtp.host, parsed.smtp.tls) == (host, "none")

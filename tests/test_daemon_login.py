"""The login conversation as mfad runs it: policy, timeout, replay, reload, secrecy at rest."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import Daemon, MakeUser, totp_now
from wire import PamWire, start_payload


def _result(mfad: Daemon, user: str, answers: list[str]) -> str:
    with PamWire(mfad.pam_socket) as wire:
        return wire.login(user, answers, service="sshd")[-1].payload


def test_mode_off_skips_everyone_and_never_succeeds(mfad: Daemon) -> None:
    """mode: off answers SKIP (PAM_IGNORE), never SUCCESS, and the skip is audited."""
    mfad.enroll("root")
    mfad.restart(mode="off")
    assert _result(mfad, "root", []) == "K"
    assert mfad.audit()[-1] | {"outcome": "skipped", "reason": "mode_off"} == mfad.audit()[-1]


def test_optional_mode_skips_unenrolled_but_asks_enrolled(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """In optional mode an unenrolled user is skipped and an enrolled one must give a code."""
    mfad.restart(mode="optional")
    plain, enrolled = make_user(), make_user()
    secret = mfad.enroll(enrolled)
    assert _result(mfad, plain, []) == "K"
    assert _result(mfad, enrolled, [totp_now(secret)]) == "S"
    assert _result(mfad, enrolled, ["000000"] * 3) == "M"


def test_required_mode_refuses_known_unenrolled_user_with_a_message(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """Required mode, no enrolment at login: a user without a token is told to ask an admin."""
    mfad.restart(enrolment={"at_login": False})
    user = make_user()
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [])
    assert [f.type for f in frames] == ["E", "R"]
    assert "Contact your administrator" in frames[0].payload
    assert frames[-1].payload == "F"
    assert mfad.audit()[-1]["reason"] == "not_enrolled"


def test_prompt_timeout_tells_the_user_and_fails(mfad: Daemon) -> None:
    """No answer within prompt_timeout: the timeout message, then FAILURE, audited as timeout."""
    mfad.enroll("root")
    mfad.restart(login={"prompt_timeout": 1})
    with PamWire(mfad.pam_socket) as wire:
        wire.send("S", start_payload("root"))
        assert wire.recv().type == "P"
        time.sleep(1.5)
        error, result = wire.recv(), wire.recv()
    assert error.payload == "Correct verification code was not entered before timeout."
    assert result.payload == "F"
    assert mfad.audit()[-1]["reason"] == "timeout"


def test_fifty_parallel_logins_with_one_code_give_one_success(mfad: Daemon) -> None:
    """The same valid code presented by 50 logins at once is accepted exactly once."""
    secret = mfad.enroll("root")
    code = totp_now(secret)
    wires = [PamWire(mfad.pam_socket) for _ in range(50)]
    for wire in wires:
        wire.send("S", start_payload("root"))
        assert wire.recv().type == "P"
    gate = threading.Barrier(50)
    results: list[str] = []

    def answer(wire: PamWire) -> None:
        gate.wait()
        wire.send("A", code)
        frame = wire.recv()
        results.append("S" if frame.type == "R" and frame.payload == "S" else "refused")

    threads = [threading.Thread(target=answer, args=(w,)) for w in wires]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for wire in wires:
        wire.sock.close()
    assert results.count("S") == 1
    refused = [r["reason"] for r in mfad.audit() if r["event"] == "attempt"]
    assert len(refused) == 49
    # the first refusals are replays; then the guessing defence stops checking at all
    assert set(refused) <= {"replayed_code", "source_blocked", "locked"}
    assert "replayed_code" in refused


def test_code_used_once_is_refused_the_second_time(mfad: Daemon) -> None:
    """RFC 6238 5.2: after a success, the same code is refused, audited as a replay."""
    secret = mfad.enroll("root")
    code = totp_now(secret)
    assert _result(mfad, "root", [code]) == "S"
    assert _result(mfad, "root", [code, code, code]) == "M"
    assert [r["reason"] for r in mfad.audit() if r["event"] == "attempt"] == ["replayed_code"] * 3


def test_broken_config_is_refused_at_start_with_line_and_key(mfad: Daemon) -> None:
    """A typo in the config stops mfad from starting, naming the line and the key."""
    mfad.stop()
    mfad.write_config(login={"max_atempts": 3})
    out = subprocess.run(
        [sys.executable, "-m", "mfad", "--config", str(mfad.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "login.max_atempts: unknown setting" in out.stderr
    assert " line " in out.stderr


def test_sighup_with_broken_config_keeps_the_running_one(mfad: Daemon) -> None:
    """SIGHUP with a bad file is rejected and logins go on as before; a good file takes effect."""
    secret = mfad.enroll("root")
    mfad.config_path.write_text("mode: sometimes\n")
    assert mfad.proc is not None
    mfad.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert mfad.audit()[-1]["event"] == "daemon_reload"
    assert mfad.audit()[-1]["outcome"] == "failure"
    assert _result(mfad, "root", [totp_now(secret)]) == "S"
    mfad.write_config(mode="off")
    mfad.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert _result(mfad, "root", []) == "K"


def test_secrets_are_sealed_at_rest_and_bound_to_their_user(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """The store holds no readable key; a sealed secret moved to another user fails closed."""
    victim = make_user()
    secret = mfad.enroll("root")
    mfad.enroll(victim)
    mfad.stop()
    raw = mfad.db_path.read_bytes()  # a clean stop checkpoints the WAL into the file
    assert secret.encode() not in raw
    assert base64.b32decode(secret + "=" * (-len(secret) % 8)) not in raw
    with sqlite3.connect(mfad.db_path) as db:
        db.execute(
            "UPDATE accounts SET secret = (SELECT secret FROM accounts WHERE user = 'root')"
            " WHERE user = ?",
            (victim,),
        )
    mfad.start()
    assert _result(mfad, victim, [totp_now(secret)]) == "U"
    assert "does not decrypt" in mfad.stderr()


@pytest.mark.parametrize("state", ["disabled"])
def test_disabled_user_has_no_token_left(mfad: Daemon, state: str) -> None:
    """After `disable`, the old code no longer works and the secret is gone from the store."""
    secret = mfad.enroll("root")
    changed = mfad.request("disable", user="root")["changed"]
    assert changed == [{"user": "root", "from": "active", "to": state}]
    # required mode: the user must enrol anew, and the old code is not accepted for that
    assert _result(mfad, "root", [totp_now(secret)] * 3) == "M"
    with sqlite3.connect(mfad.db_path) as db:
        assert db.execute("SELECT secret FROM accounts WHERE user='root'").fetchone() == (None,)


def test_no_secret_or_code_reaches_any_log(mfad: Daemon) -> None:
    """Neither the base32 key nor any code typed appears in the audit log or stderr."""
    secret = mfad.enroll("root")
    codes = [totp_now(secret), "123456", "654321"]
    _result(mfad, "root", codes[1:] + codes[:1])
    mfad.stop()
    logs = mfad.audit_path.read_text() + mfad.stderr()
    for needle in [secret, *codes]:
        assert needle not in logs


def test_sighup_reopens_the_audit_log_even_when_the_config_is_bad(mfad: Daemon) -> None:
    """logrotate renames the log and sends SIGHUP: new records go to a new file, even if the
    config file happens to be broken at that moment (the reload is refused, rotation is not)."""
    rotated = mfad.audit_path.with_name("audit.jsonl.1")
    mfad.audit_path.rename(rotated)
    mfad.config_path.write_text("mode: sometimes\n")
    assert mfad.proc is not None
    mfad.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert mfad.request("status", user="root")["ok"]
    fresh = mfad.audit()
    assert [r["event"] for r in fresh] == ["daemon_reload"]
    assert fresh[0]["outcome"] == "failure"
    last_rotated = rotated.read_text().splitlines()[-1]
    assert fresh[0]["seq"] == json.loads(last_rotated)["seq"] + 1


def test_a_reused_code_is_named_as_such_not_as_incorrect(mfad: Daemon) -> None:
    """A right code whose step was already used says so, and to wait for the next code,
    instead of "Incorrect verification code." (two logins within one 30 s step)."""
    secret = mfad.enroll("root")
    code = totp_now(secret)
    assert _result(mfad, "root", [code]) == "S"
    with PamWire(mfad.pam_socket) as wire:
        texts = [f.payload for f in wire.login("root", [code, code], service="sshd")]
    assert "That code was already used. Wait for the next code and enter it." in texts
    assert "Incorrect verification code." not in texts


def test_status_of_a_name_nobody_has_is_not_found(mfad: Daemon) -> None:
    """`status` of a name NSS does not know is `no_such_user` (`mfa` exits 5), not a
    row for a user that does not exist."""
    answer = mfad.request("status", user="nosuchuser-mfa")
    assert answer["ok"] is False and answer["error"] == "no_such_user", answer

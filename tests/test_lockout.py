"""Guessing defence: source back-off and block first, account lock last (faillock semantics)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, MakeUser, totp_now
from fakeclock import FakeClock
from pamtest import authenticate, write_service
from wire import PamWire, start_payload

pytest_plugins = ["fakeclock"]

LOCKED = "The account is locked after too many failed attempts"
BLOCKED = "Too many failed attempts from this host"


def _guess(mfad: Daemon, user: str, rhost: str, answer: str = "000000") -> list[str]:
    """One connection, one answer; returns the texts and the result the daemon sent."""
    with PamWire(mfad.pam_socket) as wire:
        wire.send("S", start_payload(user, rhost=rhost, service="sshd"))
        out = []
        frame = wire.recv()
        if frame.type == "P":
            wire.send("A", answer)
            wire.sock.shutdown(1)  # no further answers: the conversation ends after this one
            frame = wire.recv()
        out.append(frame.payload)
        while frame.type != "R" and not wire.at_eof():
            frame = wire.recv()
            out.append(frame.payload)
        return out


def _reasons(mfad: Daemon) -> list[str]:
    return [r["reason"] for r in mfad.audit() if r["event"] == "attempt"]


def test_two_hundred_parallel_guesses_check_exactly_the_threshold(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """200 guesses at once from 200 hosts: 5 are checked, the lock engages, 195 are not checked."""
    user = make_user()
    mfad.enroll(user)
    wires = []
    for i in range(200):
        wire = PamWire(mfad.pam_socket)
        wire.send("S", start_payload(user, rhost=f"198.51.{i // 100}.{i % 100}"))
        assert wire.recv().type == "P"
        wires.append(wire)
    gate = threading.Barrier(len(wires))

    def guess(wire: PamWire) -> None:
        gate.wait()
        wire.send("A", "000000")
        wire.sock.shutdown(1)

    threads = [threading.Thread(target=guess, args=(w,)) for w in wires]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for wire in wires:
        assert wire.closed_after_reading()
        wire.sock.close()
    reasons = _reasons(mfad)
    assert reasons.count("incorrect_code") == 5
    assert reasons.count("locked") == 195
    locks = [r for r in mfad.audit() if r["event"] == "lock_set"]
    assert len(locks) == 1 and locks[0]["user"] == user and locks[0]["failures"] == 5


def test_one_guessing_host_is_blocked_while_the_owner_logs_in_from_another(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """Host A is blocked after 4 wrong codes; the owner on host B still logs in; only guesses
    from several hosts reaching the account threshold lock the owner out too."""
    user = make_user()
    secret = mfad.enroll(user)
    for _ in range(4):
        _guess(mfad, user, "203.0.113.1")
    refused = _guess(mfad, user, "203.0.113.1")
    assert any(BLOCKED in text for text in refused) and refused[-1] == "F"
    assert _guess(mfad, user, "192.0.2.7", totp_now(secret))[-1] == "S"
    for _ in range(4):
        _guess(mfad, user, "203.0.113.2")
    _guess(mfad, user, "203.0.113.3")  # the fifth consecutive wrong code, from a third host
    locked = _guess(mfad, user, "192.0.2.7", totp_now(secret, 1))
    assert any(LOCKED in text for text in locked) and locked[-1] == "F"
    assert "source_blocked" in {r["event"] for r in mfad.audit()}


def test_wrong_code_far_outside_the_window_is_refused_but_reported_as_clock_offset(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A code from 10 minutes ahead is refused, and audited with the suspected offset."""
    user = make_user()
    secret = mfad.enroll(user)
    assert _guess(mfad, user, "", totp_now(secret, 20))[-1] != "S"
    attempt = next(r for r in mfad.audit() if r["event"] == "attempt")
    assert attempt["reason"] == "incorrect_code"
    assert attempt["suspected_clock_offset_s"] == 600


def test_back_off_delays_each_wrong_answer_more(mfad: Daemon, make_user: MakeUser) -> None:
    """With delay 0.3 s, three wrong codes from one host take at least 0.3 + 0.6 + 1.2 s."""
    mfad.restart(lockout={"delay": 0.3})
    user = make_user()
    mfad.enroll(user)
    begun = time.monotonic()
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login(user, ["000000"] * 3)[-1].payload == "M"
    assert time.monotonic() - begun >= 2.1


def test_silent_lock_gives_no_hint(mfad: Daemon, make_user: MakeUser) -> None:
    """With silent: true a locked user sees the usual prompts and refusals, nothing about a lock."""
    mfad.restart(lockout={"silent": True, "deny": 2, "source_deny": 100})
    user = make_user()
    secret = mfad.enroll(user)
    for _ in range(2):
        _guess(mfad, user, "")
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [totp_now(secret)] * 3)
    texts = [f.payload for f in frames if f.type == "E"]
    assert frames[-1].payload == "M"
    assert not any("locked" in t for t in texts)
    assert _reasons(mfad)[-3:] == ["locked"] * 3


@pytest.mark.parametrize(("even_deny_root", "locked"), [(False, False), (True, True)])
def test_root_is_locked_only_with_even_deny_root(
    mfad: Daemon, even_deny_root: bool, locked: bool
) -> None:
    """Like pam_faillock, root is exempt from the account lock unless even_deny_root is set."""
    mfad.restart(lockout={"even_deny_root": even_deny_root, "deny": 2, "source_deny": 100})
    secret = mfad.enroll("root")
    for _ in range(2):
        _guess(mfad, "root", "")
    assert (_guess(mfad, "root", "", totp_now(secret))[-1] == "F") is locked


class _Pam:
    """The real libpam with pam_mfa.so pointed at the test daemon."""

    def __init__(self, module: Path, daemon: Daemon) -> None:
        self.dir = daemon.tmp / "pam.d"
        write_service(self.dir, "mfa", [f"auth required {module} socket={daemon.pam_socket}"])

    def login(self, user: str, answers: list[str], rhost: str = "192.0.2.1") -> tuple[str, str]:
        result = authenticate(self.dir, "mfa", user, answers, rhost=rhost)
        return result.name, " ".join(result.texts("error"))


def test_lock_survives_restart_and_expires_after_unlock_time(
    pam_module: Path, mfad_clock: Daemon, fake_clock: FakeClock, make_user: MakeUser
) -> None:
    """Through libpam: locked, still locked after a daemon restart, free once unlock_time passed."""
    mfad = mfad_clock
    settings = {"deny": 3, "source_deny": 100, "unlock_time": 3}
    mfad.restart(lockout=settings)
    pam = _Pam(pam_module, mfad)
    user = make_user()
    secret = fake_clock.enroll(mfad, user)
    assert pam.login(user, ["000000"] * 3)[0] == "PAM_AUTH_ERR"  # third wrong code locks
    mfad.restart(lockout=settings)
    name, errors = pam.login(user, [fake_clock.totp(secret)])
    assert name == "PAM_AUTH_ERR" and LOCKED in errors
    fake_clock.advance(3.2)
    assert pam.login(user, [fake_clock.totp(secret)])[0] == "PAM_SUCCESS"


def test_admin_unlock_lifts_a_lock_without_expiry(
    pam_module: Path, mfad: Daemon, make_user: MakeUser
) -> None:
    """unlock_time 0 locks until `unlock`; after it the right code works again, all audited."""
    mfad.restart(lockout={"deny": 2, "source_deny": 100, "unlock_time": 0})
    pam = _Pam(pam_module, mfad)
    user = make_user()
    secret = mfad.enroll(user)
    pam.login(user, ["000000", "111111"])
    name, errors = pam.login(user, [totp_now(secret)])
    assert name == "PAM_AUTH_ERR" and "until an administrator unlocks it" in errors
    assert mfad.request("unlock", user=user) == {
        "ok": True,
        "unlocked": [user],
        "canonical": {user: user},
        "cleared": {
            user: {"locked_until": "until unlocked", "source_blocks": [], "failed_attempts": 2}
        },
        "refused": [],
    }
    assert pam.login(user, [totp_now(secret)])[0] == "PAM_SUCCESS"
    events = [r["event"] for r in mfad.audit()]
    assert "lock_set" in events and "lock_cleared" in events


def test_counters_survive_a_restart(mfad: Daemon, make_user: MakeUser) -> None:
    """Three wrong codes, a restart, two more: the fifth still locks (counts are in the store)."""
    user = make_user()
    secret = mfad.enroll(user)
    for i in range(3):
        _guess(mfad, user, f"192.0.2.{i}")
    mfad.restart()
    for i in range(3, 5):
        _guess(mfad, user, f"192.0.2.{i}")
    assert any(LOCKED in t for t in _guess(mfad, user, "192.0.2.9", totp_now(secret)))

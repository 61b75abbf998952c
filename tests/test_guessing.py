"""No way around the guard: every code, on either socket, is counted, delayed and locked out.

Each test here was a way to guess codes without limit on 5e2ee70: the control
socket checked codes for `recovery_codes --regenerate` and `enroll_confirm`
with no counting at all, an automatic unlock restarted the count for ever, and
with `lockout.silent` a locked account answered at once while a wrong code
waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyotp
from conftest import Daemon, totp_now
from fakeclock import FakeClock
from wire import ControlAs, PamWire

pytest_plugins = ["fakeclock"]

MakeUser = Callable[..., str]


def _wrong(secret: str, now: float | None = None) -> str:
    """A code that is right for no step near now (so no replay or window luck); `now`: the
    daemon's, when it is not the real time."""
    otp = pyotp.TOTP(secret)
    now = time.time() if now is None else now
    near = {otp.at(now + 30 * k) for k in range(-25, 26)}
    return next(c for c in (f"{n:06d}" for n in range(1000000)) if c not in near)


def _attempts(mfad: Daemon, user: str) -> list[dict[str, Any]]:
    return [r for r in mfad.audit() if r["event"] == "attempt" and r.get("user") == user]


def _regenerate_guesses(
    mfad: Daemon, user: str, secret: str, wrong: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`recovery_codes --regenerate` sent as `user` over the control socket, `wrong` times
    with a wrong code and then with the right one: the wrong answers and the last one."""
    with ControlAs(mfad.control_socket, user) as me:
        answers = [
            me.request("recovery_codes", user=user, regenerate=True, code=_wrong(secret))
            for _ in range(wrong)
        ]
        right = me.request("recovery_codes", user=user, regenerate=True, code=totp_now(secret))
    return answers, right


def test_guessing_over_the_control_socket_is_slowed_counted_and_locked(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """As an ordinary user, wrong codes to `recovery_codes --regenerate` are refused with
    growing delays; the fifth locks the account (and says so): the sixth answer, even the
    right code, is refused unseen, no new recovery codes are made, and an SSH-style login
    with a right code is refused as locked too."""
    mfad.restart(lockout={"delay": 0.2, "max_delay": 5, "source_deny": 10})
    user = make_user()
    secret = mfad.enroll(user)
    answers, sixth = _regenerate_guesses(mfad, user, secret, 5)
    assert [a["error"] for a in answers] == ["wrong_code"] * 4 + ["locked"]
    assert sixth["ok"] is False and sixth["error"] == "locked", sixth
    assert "codes" not in sixth
    delays = [r["delay_s"] for r in _attempts(mfad, user) if r["outcome"] == "failure"]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2]
    for answer, delay in zip(answers, delays, strict=True):
        assert answer["elapsed_s"] >= delay  # each wrong code waited its back-off
    assert any(r["event"] == "lock_set" and r.get("user") == user for r in mfad.audit())
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [totp_now(secret, 1)], service="sshd", rhost="192.0.2.9")
    assert frames[-1].payload == "F"
    assert "locked" in frames[-2].payload


def test_enrolment_confirmation_over_the_control_socket_is_guarded(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """`mfa enroll` confirmation goes through the same guard: the fifth wrong code for the
    new key locks the account, and then the right code does not activate it."""
    mfad.restart(lockout={"source_deny": 10})
    user = make_user()
    with ControlAs(mfad.control_socket, user) as me:
        begun = me.request("enroll_begin", user=user)
        assert begun["ok"], begun
        wrong = [
            me.request("enroll_confirm", user=user, code=_wrong(begun["secret"])) for _ in range(5)
        ]
        right = me.request("enroll_confirm", user=user, code=totp_now(begun["secret"]))
    assert [w["error"] for w in wrong] == ["wrong_code"] * 4 + ["locked"]
    assert right["error"] == "locked", right
    assert mfad.request("status", user=user)["state"] != "active"


def test_a_guesser_on_the_control_socket_is_blocked_before_the_owner_is_locked_out(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """With the default stages, codes given to `mfa` count as one source of their own: four
    wrong ones block that source (the fourth answer says so, and the right code is then
    refused there), while the owner
    logging in over SSH from a host with the right code still gets in."""
    user = make_user()
    secret = mfad.enroll(user)
    wrong, after = _regenerate_guesses(mfad, user, secret, 4)
    assert [w["error"] for w in wrong] == ["wrong_code"] * 3 + ["locked"]
    assert after["error"] == "locked" and "blocked" in after["message"]
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [totp_now(secret, 1)], service="sshd", rhost="192.0.2.9")
    assert frames[-1].payload == "S"


def _guess_round(
    mfad: Daemon, user: str, secret: str, wrong: int, now: float | None = None
) -> list[str]:
    results = []
    for _ in range(wrong):
        with PamWire(mfad.pam_socket) as wire:
            results.append(
                wire.login(user, [_wrong(secret, now)], service="sshd", rhost="192.0.2.50")[
                    -1
                ].payload
            )
    return results


def test_lifetime_cap_locks_until_an_administrator_unlocks(
    mfad_clock: Daemon, fake_clock: FakeClock, make_user: MakeUser
) -> None:
    """Automatic unlocks do not restart the lifetime count: after `lifetime_deny` wrong codes
    with no success the account stays locked past unlock_time, audited as lifetime_cap,
    until `mfa unlock`; then the right code logs in."""
    mfad, clock = mfad_clock, fake_clock
    now = clock.now  # the daemon's time, for codes that are right for no step near it
    mfad.restart(
        login={"max_attempts": 1},
        lockout={
            "deny": 2,
            "unlock_time": 1,
            "lifetime_deny": 5,
            "source_deny": 100,
        },
    )
    user = make_user()
    secret = clock.enroll(mfad, user)
    assert _guess_round(mfad, user, secret, 2, now()) == ["M", "F"]  # the 2nd locks, for 1 s
    clock.advance(1.2)
    assert _guess_round(mfad, user, secret, 2, now()) == ["M", "F"]  # unlocked by time, relocked
    clock.advance(1.2)
    assert _guess_round(mfad, user, secret, 1, now()) == ["F"]  # the 5th since the last success
    clock.advance(1.2)  # past unlock_time: still locked
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [clock.totp(secret)], service="sshd", rhost="192.0.2.50")
    assert frames[-1].payload == "F" and "until an administrator unlocks it" in frames[-2].payload
    capped = [r for r in mfad.audit() if r["event"] == "lock_set" and r["user"] == user]
    assert [r["reason"] for r in capped] == ["deny", "deny", "lifetime_cap"]
    assert mfad.request("status", user=user)["failures_since_success"] == 5
    assert mfad.request("unlock", user=user)["unlocked"] == [user]
    with PamWire(mfad.pam_socket) as wire:
        assert (
            wire.login(user, [clock.totp(secret)], service="sshd", rhost="192.0.2.50")[-1].payload
            == "S"
        )
    assert mfad.request("status", user=user)["failures_since_success"] == 0


def test_with_silent_lockout_a_locked_answer_takes_as_long_as_a_wrong_one(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """`lockout.silent`: once locked, an answer is refused only after the back-off a wrong
    code from that host would get, not at once, so timing does not reveal the lock."""
    mfad.restart(
        login={"max_attempts": 1},
        lockout={
            "silent": True,
            "deny": 2,
            "delay": 0.4,
            "source_deny": 100,
        },
    )
    user = make_user()
    secret = mfad.enroll(user)
    assert _guess_round(mfad, user, secret, 2) == ["M", "M"]  # locked now, silently
    began = time.monotonic()
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, [totp_now(secret)], service="sshd", rhost="192.0.2.50")
    took = time.monotonic() - began
    assert frames[-1].payload == "M"
    assert took >= 1.6  # the third answer from that host waits 0.4 * 2**2 s, wrong or locked
    refused = _attempts(mfad, user)[-1]
    assert refused["outcome"] == "refused" and refused["reason"] == "locked"
    assert refused["delay_s"] == 1.6


def test_with_silent_lockout_every_answer_of_a_conversation_slows_down_alike(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """`lockout.silent`, three answers in one conversation from a fresh host: to a locked
    account they wait 0.2, 0.4, 0.8 s, as wrong codes to an unlocked one do (refused
    answers advance the host's back-off too), so the lock does not show in the timing."""
    mfad.restart(lockout={"silent": True, "deny": 2, "delay": 0.2, "source_deny": 100})
    user = make_user()
    secret = mfad.enroll(user)
    with PamWire(mfad.pam_socket) as wire:  # lock it from elsewhere
        wire.login(user, [_wrong(secret)] * 2, service="sshd", rhost="192.0.2.60")
    with PamWire(mfad.pam_socket) as wire:
        assert (
            wire.login(user, [_wrong(secret)] * 3, service="sshd", rhost="192.0.2.61")[-1].payload
            == "M"
        )
    refused = [r for r in _attempts(mfad, user) if r.get("rhost") == "192.0.2.61"]
    assert [(r["outcome"], r["delay_s"]) for r in refused] == [
        ("refused", 0.2),
        ("refused", 0.4),
        ("refused", 0.8),
    ]


def test_the_lifetime_cap_locks_root_too(mfad: Daemon) -> None:
    """Root is spared the account lock (even_deny_root false) but not the lifetime cap:
    from many hosts, `lifetime_deny` wrong codes lock root until an administrator unlocks."""
    mfad.restart(login={"max_attempts": 1}, lockout={"lifetime_deny": 6, "source_deny": 2})
    secret = mfad.enroll("root")
    for host in range(6):
        with PamWire(mfad.pam_socket) as wire:
            wire.login("root", [_wrong(secret)], service="sshd", rhost=f"198.51.100.{host}")
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login("root", [totp_now(secret)], service="sshd", rhost="198.51.100.99")
    assert frames[-1].payload == "F" and "until an administrator unlocks it" in frames[-2].payload
    locks = [r for r in mfad.audit() if r["event"] == "lock_set" and r["user"] == "root"]
    assert [r["reason"] for r in locks] == ["lifetime_cap"]
    mfad.request("unlock", user="root")

"""A wall clock the test moves, for a real mfad: Debian's libfaketime preloaded into mfad only.

Tests of anything that expires on the wall clock (TOTP steps, lock expiry, exemption
expiry, enrolment deadlines) would otherwise have to sleep until the time passed.
Instead the daemon runs with libfaketime (package ``faketime``) as an LD_PRELOAD, and
its wall clock is whatever the test last wrote into a timestamp file: frozen there
until the test moves it. Nothing in the daemon knows about it, and nothing is mocked;
the daemon's code is the code that ships. How::

    pytest_plugins = ["fakeclock"]  # in the test module: the fixtures below

    def test_lock_expires(mfad_clock: Daemon, fake_clock: FakeClock, make_user) -> None:
        user = make_user()
        secret = fake_clock.enroll(mfad_clock, user)  # not mfad_clock.enroll (see below)
        ...  # lock the account for unlock_time 3
        fake_clock.advance(3.2)  # the daemon now sees 3.2 s more, at once
        code = fake_clock.totp(secret)  # the code an app shows at the daemon's now

``mfad_clock`` is a started daemon (as ``mfad``) under ``fake_clock``; restarts keep it
(``Daemon.env`` is given to every start). A test that needs a fixture built on ``mfad``
(``pam_login``) takes ``mfad`` instead and puts it under the clock with
``fake_clock.attach(mfad, **overrides)``, a restart (with config overrides, if the test
restarts anyway). Or pass ``FakeClock(path).env`` to ``Daemon(tmp, env)`` /
``running_daemon(env)`` yourself. For a preload of your own as well, join both into
LD_PRELOAD (``env`` keeps one already set in the test's own environment).

What is faked (``env``): LD_PRELOAD loads libfaketime; FAKETIME_TIMESTAMP_FILE names
the file holding the time, as seconds since the epoch (FAKETIME_FMT=%s; fractions
allowed), an absolute time, so the clock stands still between moves;
FAKETIME_NO_CACHE=1 makes every clock read re-read the file, so a move is seen at
once (not after libfaketime's 10 s cache). Only the wall clock (CLOCK_REALTIME,
time.time(), sqlite's 'now', the audit log's timestamps) is faked:
FAKETIME_DONT_FAKE_MONOTONIC=1 keeps CLOCK_MONOTONIC real, so asyncio's timers,
uvloop's loop, prompt timeouts and back-off delays run in real time; NO_FAKE_STAT=1
keeps file timestamps real. The test process itself is not preloaded: its time.time()
stays real, so codes come from ``fake_clock.totp``/``enroll`` (or ``fake_clock.now()``),
never from conftest's totp_now or Daemon.enroll, which use the real time: START is far
from it, so such a code is refused, not accepted by luck.

Caveats (libfaketime 0.9.10, Debian 12): time.sleep() in the preloaded process fails
with EINVAL under FAKETIME_DONT_FAKE_MONOTONIC (Python 3.11 sleeps with
clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which that version mishandles:
libfaketime issue #426); mfad never calls it (asyncio.sleep, threading waits, select
and sqlite are fine). An unreadable or missing timestamp file makes libfaketime fall
back to the real clock, so the file is replaced atomically, and ``mfad_clock`` and
``attach`` check that the daemon really started at the fake time. libfaketime keeps
/dev/shm/faketime_shm_<pid> and sem.faketime_sem_<pid> while a preloaded process runs and
removes them when it exits, as mfad does on SIGTERM (Daemon.stop); a SIGKILL leaves them.

PYTEST_DONT_REWRITE: a test module imports FakeClock before its pytest_plugins loads this
module as a plugin, and pytest would warn that it is too late to rewrite the asserts here
(an error under filterwarnings = error); they carry their own messages instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
from conftest import SEEN, Daemon, running_daemon

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# 2033-05-18 03:33:15 UTC: years from the real time, so a code computed from the test's
# own clock by mistake is refused rather than accepted by luck; a whole number of 30 s
# and of 60 s steps plus 15 s, so the clock starts mid-step for either period.
START = 1_999_999_980 + 15


class FakeClock:
    """The wall clock of the mfad processes started with `env`, held in a file at `path`."""

    def __init__(self, path: Path, start: float = START) -> None:
        if not LIBFAKETIME.exists():
            raise RuntimeError(f"{LIBFAKETIME} is missing: apt-get install faketime")
        self.path = path
        self._now = 0.0
        self.set(start)

    @property
    def env(self) -> dict[str, str]:
        """The environment that puts a process under this clock (for Daemon(tmp, env))."""
        preload = [str(LIBFAKETIME), *filter(None, [os.environ.get("LD_PRELOAD")])]
        return {
            "LD_PRELOAD": ":".join(preload),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_FMT": "%s",
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
        }

    def now(self) -> float:
        """The daemon's time.time() right now (the clock stands still between moves)."""
        return self._now

    def set(self, epoch: float) -> None:
        """Put the clock at `epoch` (seconds since 1970, UTC); backwards too."""
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text(f"{epoch:.6f}\n")
        os.replace(staged, self.path)  # never a half-written file: that reads as real time
        self._now = float(epoch)

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` forward, at once: as if the daemon had waited that long."""
        self.set(self._now + seconds)

    def totp(self, secret: str, offset_steps: int = 0, *, digits: int = 6, period: int = 30) -> str:
        """The code an authenticator app would show at the daemon's now, `offset_steps`
        periods away (conftest.totp_now, on this clock)."""
        code = str(
            pyotp.TOTP(secret, digits=digits, interval=period).at(self._now + offset_steps * period)
        )
        SEEN["secret"].add(secret)
        SEEN["code"].add(code)
        return code

    def attach(self, daemon: Daemon, **overrides: Any) -> None:
        """Restart `daemon` (Daemon.restart(**overrides)) under this clock, and keep it
        there at every later start."""
        daemon.env.update(self.env)
        daemon.restart(**overrides)
        self.check(daemon)

    def check(self, daemon: Daemon) -> None:
        """Fail unless `daemon` runs on this clock: its last start was audited at now()."""
        started = [r for r in daemon.audit() if r["event"] == "daemon_start"][-1]
        when = datetime.fromisoformat(started["time"]).timestamp()
        assert abs(when - self._now) < 1, f"mfad is not on the fake clock ({self._now}): {started}"

    def enroll(self, daemon: Daemon, user: str) -> str:
        """Daemon.enroll on this clock: enrol and confirm `user` with the previous step's
        code, so the current step's is still unused; returns the base32 secret."""
        begun = daemon.request("enroll_begin", user=user)
        assert begun["ok"], begun
        secret = str(begun["secret"])
        confirmed = daemon.request("enroll_confirm", user=user, code=self.totp(secret, -1))
        assert confirmed["ok"], confirmed
        return secret


@pytest.fixture
def fake_clock(tmp_path: Path) -> FakeClock:
    """A clock at START, for `mfad_clock` (or any daemon given its `env`)."""
    return FakeClock(tmp_path / "faketime")


@pytest.fixture
def mfad_clock(fake_clock: FakeClock) -> Iterator[Daemon]:
    """A started daemon (as `mfad`) whose wall clock is `fake_clock`, checked: the audit
    record of its start carries the fake time, not the real one."""
    with running_daemon(fake_clock.env) as daemon:
        fake_clock.check(daemon)
        yield daemon

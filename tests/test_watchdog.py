"""The systemd watchdog: mfad pings from its event loop while the loop runs.

systemd is not PID 1 here, so the test plays its part: it starts mfad as the
unit would (Type=notify, WatchdogSec= giving WATCHDOG_USEC, NOTIFY_SOCKET) and
reads the datagrams. While mfad serves, WATCHDOG=1 comes every half interval;
while its process is stopped (SIGSTOP: a loop that does not run), none comes,
which is what makes systemd kill and restart it; resumed, the pings go on. What
this leaves out: systemd's own kill and restart (`systemd-analyze verify`
checks the unit's WatchdogSec= line), and a stall of the loop alone while other
threads run, which cannot be caused from outside without a hook in mfad; the
pings come from a task on the loop (mfad.main._ping_watchdog), so they stop
with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import Daemon


def _pings(sock: socket.socket, seconds: float) -> list[bytes]:
    got, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            break
    return [g for g in got if g == b"WATCHDOG=1"]


@pytest.fixture
def supervised(mfad: Daemon) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """mfad started as systemd would with WatchdogSec=0.4s; the notify socket it talks to."""
    mfad.stop()
    mfad.write_config()
    path = mfad.tmp / "systemd-notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mfad", "--config", str(mfad.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock.settimeout(15)
            while sock.recv(4096) != b"READY=1":
                pass
            yield proc, sock
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=20)


def test_pings_come_while_the_loop_runs_and_stop_while_it_does_not(
    supervised: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    """About five pings in a second (every 0.2 s for WatchdogSec=0.4s); none in the second
    mfad is stopped, so systemd's 0.4 s would run out; pings again once it runs."""
    proc, sock = supervised
    assert len(_pings(sock, 1.0)) >= 3
    proc.send_signal(signal.SIGSTOP)
    time.sleep(0.1)
    _pings(sock, 0.05)  # one sent just before the stop, if any
    assert _pings(sock, 1.0) == []
    proc.send_signal(signal.SIGCONT)
    assert len(_pings(sock, 1.0)) >= 3


def test_no_pings_without_a_watchdog(mfad: Daemon) -> None:
    """Without WATCHDOG_USEC (no WatchdogSec=, or not under systemd) mfad sends none."""
    mfad.stop()
    mfad.write_config()
    path = mfad.tmp / "systemd-notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_USEC"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mfad", "--config", str(mfad.config_path)],
            env={**env, "NOTIFY_SOCKET": str(path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock.settimeout(15)
            assert sock.recv(4096) == b"READY=1"
            assert _pings(sock, 1.0) == []
        finally:
            proc.terminate()
            proc.wait(timeout=20)

"""Idle and trickling clients cannot starve real logins, and a burst is queued, not refused.

The daemon gives every connection START_TIMEOUT (10 s) to deliver its whole
START frame, counted from the connection, not reset by each byte; and it holds
at most ``max_connections`` at once: at the cap a new connection evicts the
oldest one that has not sent START yet, so a conversation under way is never cut.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from wire import PamWire, start_payload

from mfa_wire.framing import encode, recv_frame_blocking
from mfad.conversation import START_TIMEOUT

IDLE = 1000
TRICKLERS = 100
SLACK = 3.0  # scheduling slack on a loaded 2-core machine, on top of the daemon's deadline


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for a few thousand descriptors in this process, restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if wanted < IDLE + TRICKLERS + 100:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is too low for {IDLE + TRICKLERS} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect(path: Path) -> socket.socket:
    """A blocking connect: if the listen backlog is full it waits for the daemon to accept."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _seeded_user(mfad: Daemon, make_user: Callable[..., str]) -> tuple[str, str]:
    secret, user = secrets.token_bytes(20), make_user()  # mfad resolves names: a real user
    mfad.seed(user, secret)
    return user, base64.b32encode(secret).decode()


def _timed_login(mfad: Daemon, user: str, code: str) -> tuple[str, float]:
    began = time.monotonic()
    with PamWire(mfad.pam_socket, timeout=30) as wire:
        result = wire.login(user, [code])[-1].payload
    return result, time.monotonic() - began


class Trickler:
    """Sockets that each send one more byte of a START frame every second."""

    def __init__(self, path: Path, count: int) -> None:
        self.frame = encode("S", start_payload("slowpoke", service="sshd", rhost="x" * 40))
        self.socks = [_connect(path) for _ in range(count)]
        self.closed_at: dict[int, float] = {}
        self.opened = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set() and sent < len(self.frame):
            for i, sock in enumerate(self.socks):
                if i in self.closed_at:
                    continue
                try:
                    sock.send(self.frame[sent : sent + 1], socket.MSG_DONTWAIT)
                except OSError:
                    self.closed_at[i] = time.monotonic()
            sent += 1
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def _wait_all_closed(socks: list[socket.socket], until: float) -> dict[int, float]:
    """When the daemon closed each socket (monotonic time), polling until `until`."""
    closed: dict[int, float] = {}
    while len(closed) < len(socks) and time.monotonic() < until:
        for i, sock in enumerate(socks):
            if i not in closed and _closed_by_peer(sock):
                closed[i] = time.monotonic()
        time.sleep(0.1)
    return closed


def test_silent_and_trickling_clients_do_not_delay_a_real_login(
    mfad: Daemon, many_files: None, make_user: Callable[..., str]
) -> None:
    """With 1,000 connections that send nothing and 100 that send a byte a second, a real
    login (right code) succeeds at once; the daemon drops every one of those connections by
    its START deadline, the tricklers too although they never stop sending."""
    user, secret = _seeded_user(mfad, make_user)
    opened = time.monotonic()
    idle = [_connect(mfad.pam_socket) for _ in range(IDLE)]
    trickler = Trickler(mfad.pam_socket, TRICKLERS)
    try:
        time.sleep(2)  # every trickler has sent a few bytes of its START
        result, took = _timed_login(mfad, user, totp_now(secret))
        print(
            f"\nlogin beside {IDLE} idle and {TRICKLERS} trickling connections: "
            f"{result} in {took * 1000:.0f} ms"
        )
        assert result == "S"
        assert took < 5.0
        closed = _wait_all_closed(idle, opened + START_TIMEOUT + SLACK)
        assert len(closed) == IDLE, f"{IDLE - len(closed)} idle connections outlived the deadline"
        trickled = _wait_all_closed(trickler.socks, trickler.opened + START_TIMEOUT + SLACK)
        assert len(trickled) == TRICKLERS, "a trickling client kept its connection past START"
        last = max(closed.values()) - opened
        print(f"idle connections all closed {last:.1f}s after the first was opened")
    finally:
        trickler.stop()
        for sock in idle:
            sock.close()
    assert mfad.proc is not None and mfad.proc.poll() is None
    reasons = [r.get("reason") for r in mfad.audit() if r["event"] == "protocol_error"]
    assert reasons.count("no START frame in time") >= TRICKLERS


def test_connection_cap_evicts_idle_clients_not_a_login_under_way(
    mfad: Daemon, many_files: None, make_user: Callable[..., str]
) -> None:
    """With max_connections 64, a login that has sent START survives 200 idle connections
    arriving after it, the idle surplus is closed at once (not after the deadline), and a new
    login and a control request still succeed while the idle ones hold the rest."""
    mfad.restart(max_connections=64)
    user, secret = _seeded_user(mfad, make_user)
    with contextlib.ExitStack() as stack:
        underway = stack.enter_context(PamWire(mfad.pam_socket, timeout=30))
        underway.send("S", start_payload(user, service="sshd"))
        assert underway.recv().type == "P"
        opened = time.monotonic()
        idle = [_connect(mfad.pam_socket) for _ in range(200)]
        for sock in idle:
            stack.callback(sock.close)
        closed = _wait_all_closed(idle, opened + 2.0)
        print(f"\n{len(closed)} of 200 idle connections evicted within 2 s")
        assert len(closed) >= 200 - 64
        assert not closed.keys() & set(range(200 - 32, 200)), "newest evicted, not the oldest"
        underway.send("A", totp_now(secret))
        assert underway.recv().payload == "S"
        result, took = _timed_login(mfad, user, totp_now(secret, 1))  # the next step's code
        print(f"second login at the cap: {result} in {took * 1000:.0f} ms")
        assert result == "S"
        assert mfad.request("status", user=user)["state"] == "active"
    assert mfad.proc is not None and mfad.proc.poll() is None


BURST = 300  # more than asyncio's default listen backlog of 100


def test_a_burst_of_logins_while_mfad_is_busy_is_queued_not_refused(
    mfad: Daemon, many_files: None, make_user: Callable[..., str]
) -> None:
    """300 connections that arrive while mfad cannot accept (stopped, as a long pause or a
    busy loop would have it) all wait in the kernel's queue: none is refused with EAGAIN,
    which would make pam_mfa.so poll for a slot while later logins overtake it. Once mfad
    runs again each gets its answer, and a real login succeeds."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn < BURST:
        pytest.skip(f"net.core.somaxconn is {somaxconn}: the kernel caps every backlog there")
    user, secret = _seeded_user(mfad, make_user)
    assert mfad.proc is not None
    queued: list[socket.socket] = []
    refused = 0
    with contextlib.ExitStack() as stack:
        os.kill(mfad.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(BURST):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                stack.callback(sock.close)
                try:
                    sock.connect(str(mfad.pam_socket))
                except BlockingIOError:  # the listen backlog is full
                    refused += 1
                    continue
                queued.append(sock)
        finally:
            os.kill(mfad.proc.pid, signal.SIGCONT)
        print(f"\n{len(queued)} of {BURST} connections queued while mfad was stopped")
        assert refused == 0, f"{refused} of {BURST} connections refused: the backlog is too short"
        for i, sock in enumerate(queued):
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(encode("S", start_payload(f"burst{i:03d}", service="sshd")))
        # mode required: every name, enrolled or not, is asked for a code
        assert {recv_frame_blocking(sock).type for sock in queued} == {"P"}
        result, took = _timed_login(mfad, user, totp_now(secret))
        print(f"login after the burst: {result} in {took * 1000:.0f} ms")
        assert result == "S"


def test_control_connections_never_evict_a_login(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """The control socket (open to every local user) has a pool of its own: idle control
    connections up to the cap do not evict a login whose START has not been read yet, and
    one user cannot hold more than a few control connections at all. On 5e2ee70 the pools
    were one, so a local user's connections closed a login before mfad's first frame, which
    pam_mfa.so with fail=open takes for "daemon down" and skips."""
    mfad.restart(max_connections=16)
    user, secret = _seeded_user(mfad, make_user)
    login = _connect(mfad.pam_socket)  # accepted, START not yet sent: evictable
    time.sleep(0.3)
    idle = [_connect(mfad.control_socket) for _ in range(20)]  # root: no per-uid cap
    time.sleep(0.3)
    try:
        login.settimeout(10)
        login.sendall(encode("S", start_payload(user, service="sshd")))
        frame = recv_frame_blocking(login)
        assert frame.type == "P", frame
        login.sendall(encode("A", totp_now(secret)))
        assert recv_frame_blocking(login).payload == "S"
    finally:
        login.close()
        for sock in idle:
            sock.close()
    flooder = make_user()
    held = _held_control_connections(mfad, flooder)
    assert held == 16


def _held_control_connections(mfad: Daemon, user: str) -> int:
    """How many of 40 idle control connections from `user` mfad keeps open after a second."""
    child = (
        "import socket, sys, time\n"
        "socks = []\n"
        "for _ in range(40):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.connect(sys.argv[1])\n"
        "    socks.append(s)\n"
        "time.sleep(1)\n"
        "def open_(s):\n"
        "    try:\n"
        "        return s.recv(1, socket.MSG_DONTWAIT) != b''\n"
        "    except BlockingIOError:\n"
        "        return True\n"
        "    except ConnectionResetError:\n"
        "        return False\n"
        "print(sum(open_(s) for s in socks))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, str(mfad.control_socket)],
        user=user,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(out.stdout)


def test_an_evicted_login_connection_is_answered_unavailable(mfad: Daemon) -> None:
    """At the cap, the oldest login connection that has sent nothing is turned away with
    RESULT U (so pam_mfa.so fails closed even with fail=open), not closed silently."""
    mfad.restart(max_connections=16)
    first = _connect(mfad.pam_socket)
    time.sleep(0.3)
    rest = [_connect(mfad.pam_socket) for _ in range(16)]
    try:
        first.settimeout(10)
        frame = recv_frame_blocking(first)
        assert (frame.type, frame.payload) == ("R", "U")
    finally:
        for sock in [first, *rest]:
            sock.close()

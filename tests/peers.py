"""Scripted daemon peers for the PAM module tests.

A misbehaving mfad cannot be produced by configuring the real one, so these
small Unix-socket servers play the daemon's side of docs/protocol.md on
purpose badly (never answering, trickling, closing mid-frame, oversize or
unknown frames, a bad RESULT, running as a non-root user) or correctly with a
fixed script. They are the only fakes in the PAM tests; everything else is the
real libpam, pam_wrapper and pam_mfa.so.

Each peer runs in a thread of the test process (root), so the module's owner
and SO_PEERCRED checks pass, except NonRootPeer, which is a separate process
that drops to ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

MAX_FRAME = 65536
_LEN = struct.Struct("!I")
IO_TIMEOUT = 15.0  # a peer never waits longer than any test would

PROMPT = "Verification code: "
TIMEOUT_MESSAGE = "Correct verification code was not entered before timeout."


def frame(ftype: str, payload: str | bytes = b"") -> bytes:
    """One wire frame: u32 big-endian length, type byte, payload."""
    body = ftype.encode("ascii") + (payload.encode() if isinstance(payload, str) else payload)
    return _LEN.pack(len(body)) + body


class PeerError(Exception):
    """The module sent something the script did not expect."""


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise PeerError(f"module closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_frame(conn: socket.socket) -> tuple[str, bytes]:
    """Read one frame from the module, checking the length like mfad does."""
    (length,) = _LEN.unpack(_recv_exactly(conn, _LEN.size))
    if not 1 <= length <= MAX_FRAME:
        raise PeerError(f"module sent frame length {length}")
    body = _recv_exactly(conn, length)
    return chr(body[0]), body[1:]


def parse_start(payload: bytes) -> dict[str, str]:
    """START payload to a dict, insisting on the NUL after every pair."""
    if not payload.endswith(b"\0"):
        raise PeerError(f"START payload does not end with NUL: {payload!r}")
    fields: dict[str, str] = {}
    for pair in payload[:-1].split(b"\0"):
        key, sep, value = pair.decode("utf-8").partition("=")
        if not sep or key in fields:
            raise PeerError(f"bad or repeated START pair {pair!r}")
        fields[key] = value
    return fields


@dataclass
class Peer:
    """A Unix stream server at `path` running `handler(conn, peer)` per connection.

    Use as a context manager; on exit the listener closes, handlers waiting on
    `stopping` wake up, and the socket file is removed. `starts` holds every
    START the module sent, `answers` every ANSWER, `errors` anything a handler
    raised (a test asserts it is empty when the script matters).
    """

    path: Path
    handler: Callable[[socket.socket, Peer], None]
    starts: list[dict[str, str]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    connections: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sock: socket.socket | None = None

    def __enter__(self) -> Peer:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        accept = threading.Thread(target=self._accept_loop, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in list(self._threads):
            thread.join(IO_TIMEOUT)
        if self._sock is not None:
            self._sock.close()
        with suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                self.handler(conn, self)
            except Exception as exc:  # recorded for the test to assert on
                self.errors.append(exc)

    def read_start(self, conn: socket.socket) -> dict[str, str]:
        ftype, payload = recv_frame(conn)
        if ftype != "S":
            raise PeerError(f"first frame is {ftype!r}, not START")
        fields = parse_start(payload)
        self.starts.append(fields)
        return fields

    def wait_closed(self, conn: socket.socket) -> None:
        """Hold the connection until the module hangs up or the test ends."""
        conn.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                if not conn.recv(4096):
                    return
            except TimeoutError:
                continue
            except ConnectionError:
                return


Handler = Callable[[socket.socket, Peer], None]


def never_answers() -> Handler:
    """Reads START, then says nothing at all."""

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        peer.wait_closed(conn)

    return handler


def trickle(interval: float = 1.0) -> Handler:
    """Sends a valid INFO then RESULT S, one byte per `interval` seconds."""
    data = frame("I", "x" * 40) + frame("R", "S")

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        for i in range(len(data)):
            if peer.stopping.wait(interval):
                return
            try:
                conn.sendall(data[i : i + 1])
            except OSError:
                return  # the module gave up, as it should

    return handler


def send_then_hold(data: bytes, *, close: bool = False) -> Handler:
    """Reads START, sends `data` verbatim, then holds (or closes) the connection."""

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        with suppress(OSError):
            conn.sendall(data)
        if not close:
            peer.wait_closed(conn)

    return handler


def after_answer(data: bytes = b"", *, close: bool = False) -> Handler:
    """A conversation that breaks after it has begun: PROMPT, read the ANSWER,
    then `data` verbatim (nothing: silence) and hold or close. Like mfad
    serving a long back-off, or failing mid-conversation."""

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        conn.sendall(frame("P", PROMPT))
        atype, answer = recv_frame(conn)
        if atype != "A":
            raise PeerError(f"expected ANSWER, got {atype!r}")
        peer.answers.append(answer.decode("utf-8", "replace"))
        with suppress(OSError):
            conn.sendall(data)
        if not close:
            peer.wait_closed(conn)

    return handler


def close_mid_frame() -> Handler:
    """Announces a 10-byte INFO, sends 3 bytes of it and hangs up."""
    return send_then_hold(_LEN.pack(10) + b"Iab", close=True)


def oversize(length: int = 70000) -> Handler:
    """Announces a frame longer than MAX_FRAME and streams filler after it."""
    return send_then_hold(_LEN.pack(length) + b"I" + b"A" * 4096)


def unknown_type() -> Handler:
    return send_then_hold(frame("Z", "what is this"))


def bad_result(payload: bytes = b"X") -> Handler:
    return send_then_hold(frame("R", payload))


def conversation(
    steps: list[tuple[str, str]], *, expect: list[str] | None = None, outcome: str = "S"
) -> Handler:
    """A correct peer: sends `steps` (type, text); after each prompt reads one
    ANSWER and, when `expect` is given, checks it; finally sends RESULT `outcome`."""
    expected = list(expect or [])

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        for ftype, text in steps:
            conn.sendall(frame(ftype, text))
            if ftype in ("P", "p"):
                atype, answer = recv_frame(conn)
                if atype != "A":
                    raise PeerError(f"expected ANSWER, got {atype!r}")
                peer.answers.append(answer.decode("utf-8"))
                if expected and answer.decode("utf-8") != expected.pop(0):
                    raise PeerError(f"unexpected answer {answer!r}")
        conn.sendall(frame("R", outcome))
        peer.wait_closed(conn)

    return handler


def outcome_peer(outcome: str, code: str = "123456") -> Handler:
    """Prompt for the code, check it, say a word, then RESULT `outcome`."""
    return conversation(
        [("P", PROMPT), ("I", "checked by the scripted peer"), ("E", "and an error line")],
        expect=[code],
        outcome=outcome,
    )


def prompt_timeout(after: float) -> Handler:
    """Like mfad when the user does not answer in time: after `after` seconds it
    sends ERROR + RESULT F and closes, while the module is still in the prompt."""

    def handler(conn: socket.socket, peer: Peer) -> None:
        peer.read_start(conn)
        conn.sendall(frame("P", PROMPT))
        time.sleep(after)
        conn.sendall(frame("E", TIMEOUT_MESSAGE) + frame("R", "F"))
        conn.close()

    return handler


@contextmanager
def serve(path: Path, handler: Handler) -> Iterator[Peer]:
    with Peer(path, handler) as peer:
        yield peer


@contextmanager
def full_backlog(path: Path) -> Iterator[None]:
    """A daemon that stopped accepting: it listens, never accepts, and its
    backlog is already full, so a new connect() would wait (blocking) or fail
    with EAGAIN (non-blocking) for as long as this lasts."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    queued: list[socket.socket] = []
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect(str(path))
            except BlockingIOError:
                client.close()
                break
            queued.append(client)
        yield
    finally:
        for client in queued:
            client.close()
        server.close()
        path.unlink(missing_ok=True)


class NonRootPeer:
    """A correct peer (answers START with RESULT S) run by ``nobody``.

    `bind_as_root=False`: the socket file itself belongs to nobody, which the
    module's lstat check must refuse. `bind_as_root=True`: root binds (the file
    is root's) and the process drops to nobody before listen(), so only the
    SO_PEERCRED check can notice. Either way a module that skipped the check
    would report PAM_SUCCESS. The socket lives in a fresh directory under /tmp
    (`path`), because nobody cannot reach pytest's 0700 temporary directories.
    """

    def __init__(self, *, bind_as_root: bool) -> None:
        self.bind_as_root = bind_as_root
        self.dir = Path(tempfile.mkdtemp(prefix="mfa-nobody-"))
        self.path = self.dir / "pam.sock"
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> NonRootPeer:
        nobody = pwd.getpwnam("nobody")
        os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.dir, 0o700)
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "nonroot", str(self.path), str(int(self.bind_as_root))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self.__exit__()
            raise RuntimeError("non-root peer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(IO_TIMEOUT)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _nonroot_main(path: str, bind_as_root: bool) -> None:
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if not bind_as_root:
        drop()
    sock.bind(path)
    if bind_as_root:
        drop()  # the kernel records the listener's credentials at listen()
    sock.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        with conn, suppress(OSError, PeerError):
            conn.settimeout(IO_TIMEOUT)
            recv_frame(conn)
            conn.sendall(frame("R", "S"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["nonroot"]:
        _nonroot_main(sys.argv[2], sys.argv[3] == "1")

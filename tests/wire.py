"""A raw PAM-socket client for the daemon's own tests: frames in, frames out, no PAM.

The PAM socket is spoken frame by frame on purpose (the tests send what
pam_mfa.so would, and what it must not); the frames are the wire package's.
Control requests as another uid (ControlAs) go through `mfa`'s own client.
"""

from __future__ import annotations

import json
import pwd
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from mfa_wire.framing import Frame, encode, recv_frame_blocking


def start_payload(user: str, **items: str) -> str:
    pairs = {"v": "1", "user": user, **items}
    return "".join(f"{k}={v}\0" for k, v in pairs.items())


class PamWire:
    """Speaks to mfad's PAM socket the way pam_mfa.so does, one frame at a time."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> PamWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, ftype: str, payload: str = "") -> None:
        self.sock.sendall(encode(ftype, payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_header(self, length: int) -> None:
        self.sock.sendall(struct.pack("!I", length))

    def recv(self) -> Frame:
        return recv_frame_blocking(self.sock)

    def at_eof(self) -> bool:
        """True if the daemon closed without sending anything more."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def closed_after_reading(self) -> bool:
        """Read frames until the daemon closes; True when it did (within the timeout)."""
        while not self.at_eof():
            self.recv()
        return True

    def closed(self) -> bool:
        """True once the daemon has closed its end."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def login(self, user: str, answers: list[str], **items: str) -> list[Frame]:
        """Run a whole conversation; returns every frame the daemon sent, RESULT last."""
        self.send("S", start_payload(user, **items))
        frames: list[Frame] = []
        pending = list(answers)
        while True:
            frame = self.recv()
            frames.append(frame)
            if frame.type == "R":
                return frames
            if frame.type in "Pp":
                self.send("A", pending.pop(0) if pending else "")


_CONTROL_CHILD = """
import json, sys, time
from pathlib import Path
from mfa_cli.client import DaemonClient
client = DaemonClient(Path(sys.argv[1]), timeout=60)
for line in sys.stdin:
    began = time.monotonic()
    request = json.loads(line)
    answer = client.call(request.pop("op"), **request)
    answer["elapsed_s"] = time.monotonic() - began
    print(json.dumps(answer), flush=True)
"""


class ControlAs:
    """Control requests sent by a process running as `user`, a real uid as SO_PEERCRED
    reports it: what an unprivileged local user can do with the control socket."""

    def __init__(self, path: Path, user: str | int) -> None:
        """`user`: a local user's name, or a bare uid (a directory user only mfad's NSS
        knows; its primary group is taken to be the same number)."""
        uid, gid = (user, user) if isinstance(user, int) else pwd.getpwnam(user)[2:4]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROL_CHILD, str(path)],
            user=uid,
            group=gid,
            extra_groups=[],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> ControlAs:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """The daemon's answer, with `elapsed_s`: how long it took to come."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

"""A raw PAM-socket client for the daemon's own tests: frames in, frames out, no PAM."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from mfad.framing import Frame, encode, recv_frame_blocking


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

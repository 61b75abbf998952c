"""A blocking client for mfad's control socket: one connection per request.

The wire format (docs/protocol.md, "Control socket") is one REQUEST frame
carrying a JSON object, answered by one RESPONSE frame (or, for the streamed
ops, by several; see ``stream``). Frames and the codec are the wire package's
(mfa_wire.framing, mfa_wire.control), shared with the daemon, so the two cannot
drift apart; this module adds the connection, its time limit, and what `mfa`
says when either fails. `mfa` imports nothing from mfad (tests/test_layering.py).
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import click

from mfa_cli.errors import CliError, DaemonUnreachable, from_response
from mfa_wire.control import decode_response, encode_request
from mfa_wire.errors import BadMessage, ProtocolError
from mfa_wire.framing import recv_frame_blocking

DEFAULT_SOCKET = Path("/run/mfad/control.sock")
DEFAULT_TIMEOUT = 30.0
"""Seconds for the whole exchange; a daemon that is up answers in milliseconds."""

START_HINT = "start it with `systemctl start mfad`"


class DaemonClient:
    """Sends control requests to mfad; raises mfa_cli.errors exceptions on any failure."""

    def __init__(self, socket_path: Path = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the daemon's result (``ok`` is true).

        A refusal (``ok`` false) raises the matching CliError with the daemon's message.
        """
        return _accepted(self.call(op, **fields))

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the daemon's first answer as it came,
        ``ok`` true or false; raise only if there is none (DaemonUnreachable) or it is
        malformed (CliError). ``request`` is this with a refusal raised; the tests'
        control client is this."""
        with self._connect(op, fields) as sock:
            return self._receive(sock, op)

    def stream(self, op: str, **fields: Any) -> Generator[dict[str, Any], None, None]:
        """Send a request answered by several frames; yield each result until one has
        ``more`` false. Once a result says ``following`` (audit_follow), the wait for the
        next one has no time limit: new records come when they come."""
        with self._connect(op, fields) as sock:
            while True:
                result = _accepted(self._receive(sock, op))
                if result.get("following"):
                    sock.settimeout(None)
                yield result
                if not result.get("more"):
                    return

    def _connect(self, op: str, fields: dict[str, Any]) -> socket.socket:
        try:
            request = encode_request(op, fields)
        except ProtocolError as exc:
            raise CliError(f"the {op!r} request is too large to send") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._send(sock, request)
        except BaseException:
            sock.close()
            raise
        return sock

    def _send(self, sock: socket.socket, request: bytes) -> None:
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise DaemonUnreachable(
                f"mfad is not running (no socket at {self.socket_path}): {START_HINT}"
            ) from exc
        except ConnectionRefusedError as exc:
            raise DaemonUnreachable(
                f"mfad is not running (nothing listens on {self.socket_path}): {START_HINT}"
            ) from exc
        except PermissionError as exc:
            raise DaemonUnreachable(
                f"cannot connect to mfad at {self.socket_path}: permission denied"
            ) from exc
        except TimeoutError as exc:
            raise DaemonUnreachable(self._no_answer()) from exc
        try:
            sock.sendall(request)
        except TimeoutError as exc:
            raise DaemonUnreachable(self._no_answer()) from exc
        except ConnectionError as exc:
            raise self._hung_up() from exc

    def _receive(self, sock: socket.socket, op: str) -> dict[str, Any]:
        """The next answer, ``ok`` true or false."""
        try:
            frame = recv_frame_blocking(sock)
        except TimeoutError as exc:
            raise DaemonUnreachable(self._no_answer()) from exc
        except (ConnectionError, ProtocolError) as exc:
            raise self._hung_up() from exc
        try:
            return decode_response(frame)
        except BadMessage:
            raise CliError(
                f"mfad sent a malformed answer to {op!r}; is it the same version?"
            ) from None

    def _hung_up(self) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"mfad at {self.socket_path} closed the connection without answering; its log says why"
        )

    def _no_answer(self) -> str:
        return f"mfad at {self.socket_path} did not answer within {self.timeout:g} s"


def _accepted(response: dict[str, Any]) -> dict[str, Any]:
    """``response`` if ``ok`` is true; a refusal raises the CliError for its error code."""
    if not response["ok"]:
        raise from_response(str(response.get("error")), str(response.get("message") or ""))
    return response


pass_client = click.make_pass_decorator(DaemonClient)
"""Hands a command the DaemonClient the `mfa` group built (click's examples/repo shape)."""

"""Length-prefixed frames shared by the PAM socket, the control socket and the CLI.

A frame is ``u32 big-endian length N`` then N bytes: one type byte and a UTF-8
payload, 1 <= N <= MAX_FRAME. docs/protocol.md is the normative description.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from mfa_wire.errors import ProtocolError

MAX_FRAME = 64 * 1024
_HEADER = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Frame:
    type: str
    payload: str


def encode(ftype: str, payload: str = "") -> bytes:
    """Serialise one frame; refuses what a conforming reader would refuse."""
    body = ftype.encode("ascii") + payload.encode("utf-8")
    if len(ftype) != 1 or len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of type {ftype!r} and {len(body)} bytes is not sendable")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Frame:
    """Split a frame body into type and payload, checking the UTF-8."""
    if not body:
        raise ProtocolError("empty frame: no type byte")
    ftype = chr(body[0])
    try:
        payload = body[1:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload of {ftype!r} frame is not valid UTF-8") from exc
    return Frame(ftype, payload)


def check_length(length: int) -> None:
    if not 1 <= length <= MAX_FRAME:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_FRAME}")


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """Read one frame, or None on a clean EOF before any byte of it."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed inside a frame header") from exc
    (length,) = _HEADER.unpack(header)
    check_length(length)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed inside a frame") from exc
    return decode_body(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ProtocolError("connection closed inside a frame")
        chunks += chunk
    return bytes(chunks)


def recv_frame_blocking(sock: socket.socket) -> Frame:
    """Blocking counterpart of read_frame for the CLI and tests."""
    (length,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    check_length(length)
    return decode_body(_recv_exactly(sock, length))

"""A PAM-socket server that does no work at all: the asyncio ceiling on this machine.

    python bench/ceiling.py SOCKET_PATH [streams|protocol]

It answers START with a PROMPT and the ANSWER with RESULT success, nothing
else: no store, no audit, no TOTP. Whatever mfad does per login costs on top
of this, so it tells how far a single-process asyncio daemon can go here.
Uses uvloop when it can be imported and BENCH_UVLOOP=1.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import struct
import sys
from typing import cast

_HEADER = struct.Struct("!I")
PROMPT = _HEADER.pack(20) + b"PVerification code: "
RESULT = _HEADER.pack(2) + b"RS"


async def _frame(reader: asyncio.StreamReader) -> None:
    (length,) = _HEADER.unpack(await reader.readexactly(4))
    await reader.readexactly(length)


async def serve_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The shape mfad has: StreamReader/StreamWriter and one task per connection."""
    try:
        await _frame(reader)
        writer.write(PROMPT)
        await writer.drain()
        await _frame(reader)
        writer.write(RESULT)
        await writer.drain()
    finally:
        writer.close()


class Conversation(asyncio.Protocol):
    """The same conversation as callbacks: no task, no stream objects."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they quack alike
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""
        self.frames = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < 4 + length:
                return
            self.buffer = self.buffer[4 + length :]
            self.frames += 1
            if self.frames == 1:
                self.transport.write(PROMPT)
            else:
                self.transport.write(RESULT)
                self.transport.close()
                return


async def main(path: str, kind: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        await loop.create_unix_server(Conversation, path=path, backlog=512)
    else:
        await asyncio.start_unix_server(serve_streams, path=path, backlog=512)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    kind = sys.argv[2] if len(sys.argv) > 2 else "streams"
    if os.environ.get("BENCH_UVLOOP") == "1":
        importlib.import_module("uvloop").run(main(sys.argv[1], kind))
    else:
        asyncio.run(main(sys.argv[1], kind))

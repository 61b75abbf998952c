"""The PAM socket's side of one login: START in, prompts and text out, answers in, RESULT out.

It decides nothing (session.py does): it speaks docs/protocol.md's frames to
pam_mfa.so with the timeouts that belong to the wire. A module that went away
is not an error here: what was decided stands, and writes to a closed
connection are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

from mfa_wire.frametypes import Outcome, T
from mfa_wire.framing import Frame, encode, read_frame
from mfad.errors import ProtocolError

START_TIMEOUT = 10.0  # the module sends START right after connecting


class PromptTimeout(Exception):
    """The user did not answer within prompt_timeout."""


class PeerGone(Exception):
    """The module closed the connection mid-conversation."""


class Conversation:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prompt_timeout: float
    ) -> None:
        self._reader, self._writer = reader, writer
        self._prompt_timeout = prompt_timeout

    async def start(self) -> Frame | None:
        """The first frame (START, if the module is well behaved), or None on a clean EOF;
        TimeoutError if it does not come within START_TIMEOUT."""
        async with asyncio.timeout(START_TIMEOUT):
            return await read_frame(self._reader)

    async def ask(self, text: str) -> str:
        """Ask with echo off; the answer, or PromptTimeout / PeerGone / ProtocolError."""
        await self._send(T.PROMPT_OFF, text)
        try:
            async with asyncio.timeout(self._prompt_timeout):
                frame = await read_frame(self._reader)
        except TimeoutError:
            raise PromptTimeout from None
        if frame is None:
            raise PeerGone
        if frame.type != T.ANSWER:
            raise ProtocolError(f"expected ANSWER, got a {frame.type!r} frame")
        return frame.payload

    async def acknowledge(self, text: str) -> None:
        """A last prompt that carries the INFO before it to the screen.

        sshd delivers PAM messages together with the next prompt; messages after the
        last one become an SSH banner, which `ssh -q` hides. Recovery codes are shown
        only once and a low-codes warning matters, so they come with a prompt. What
        was decided stands either way: no answer, a timeout or a drop change nothing.
        """
        await self._send(T.PROMPT_ON, text)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, ProtocolError):
            async with asyncio.timeout(self._prompt_timeout):
                await read_frame(self._reader)

    async def info(self, text: str) -> None:
        await self._send(T.INFO, text)

    async def error(self, text: str) -> None:
        await self._send(T.ERROR, text)

    async def result(self, outcome: Outcome) -> None:
        await self._send(T.RESULT, outcome.value)

    async def _send(self, ftype: str, payload: str) -> None:
        if self._writer.is_closing():
            return  # the module went away; its login is over either way
        try:
            self._writer.write(encode(ftype, payload))
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

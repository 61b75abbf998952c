"""The two listening sockets, one task per connection, bounded shutdown.

The PAM socket is 0600 root (only root processes such as sshd's monitor, login
and su may start a login check); the control socket is 0666 and every request
on it is authorised by the caller's SO_PEERCRED uid in control.py.

Each connection gets a hard deadline and the daemon holds at most
``max_connections`` at once. At the cap a new connection evicts the oldest one
that has not yet sent its START frame: clients that connect and say nothing
(or trickle) cannot starve real logins, and no conversation under way is cut.

A control op may answer with a stream of frames (``mfa audit --follow``): such
a connection is exempt from the control deadline and lasts until its client
closes it; at shutdown it is ended at once instead of holding the grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from mfad import ratelimit
from mfad.context import Context
from mfad.control import ControlHandler
from mfad.errors import MfaError, ProtocolError
from mfad.framing import encode, read_frame
from mfad.protocol import T
from mfad.session import START_TIMEOUT, LoginSession

log = structlog.get_logger("mfad.server")

CONTROL_DEADLINE = 30.0
SHUTDOWN_GRACE = 5.0
# Connections the kernel queues while the loop is busy. asyncio and uvloop call
# listen() again with their own default of 100, so it is passed to both: past
# the backlog, connect() fails with EAGAIN and pam_mfa.so polls for a free slot,
# which in a burst of logins serves late arrivals before early ones (measured:
# 256 concurrent logins, p99 0.48 s, and 0.13 s with this). The kernel caps it at
# net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 1024
_PEERCRED = struct.Struct("3i")


def peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connecting process, as the kernel reports it."""
    sock: socket.socket = writer.get_extra_info("socket")
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def bind_unix(path: Path, mode: int) -> socket.socket:
    """Bind a listening socket with `mode` from the first instant (no chmod race)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        # the control socket is for every local user: a directory mfad creates must be
        # searchable whatever its umask (0077) (the PAM socket's own 0600 protects it).
        # One that already exists is the administrator's, and left as it is: a private
        # directory keeps the control socket private on purpose.
        path.parent.chmod(0o755)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # a stale socket from a previous run
        else:
            raise MfaError(f"{path} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(LISTEN_BACKLOG)
    return sock


class Server:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.control = ControlHandler(ctx)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # connections that have not finished their first frame, oldest first
        self._unstarted: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._paths: list[Path] = []
        self._streams: set[asyncio.Task[None]] = set()  # streamed control answers
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.ctx.config
        for path, mode, serve in (
            (cfg.pam_socket, 0o600, self._serve_pam),
            (cfg.control_socket, 0o666, self._serve_control),
        ):
            sock = bind_unix(path, mode)
            self._paths.append(path)
            self._servers.append(await asyncio.start_unix_server(
                self._admit(serve), sock=sock, limit=2**17, backlog=LISTEN_BACKLOG,
            ))
        self._flusher = asyncio.create_task(self._flush_refusals())

    async def _flush_refusals(self) -> None:
        """Write the counts of coalesced refusals soon after their window ends."""
        while True:
            await asyncio.sleep(ratelimit.WINDOW / 4)
            await self.control.flush_refusals()

    def _admit(
        self, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        """Wrap a handler: connection cap, task tracking, and the writer always closed."""

        async def admitted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(self._tasks) >= self.ctx.config.max_connections and not self._evict_one():
                log.warning("connection_refused", reason="max_connections reached")
                writer.close()
                return
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            self._unstarted[task] = writer
            try:
                await serve(reader, writer)
            except TimeoutError:
                log.warning("connection_deadline", reason="connection held too long")
            except (ConnectionError, BrokenPipeError):
                pass  # the peer left; its session already recorded what happened
            except Exception:  # a bug: log it now, not when the task is collected
                log.exception("connection_internal_error")
            finally:
                self._tasks.discard(task)
                self._unstarted.pop(task, None)
                writer.close()

        return admitted

    def _evict_one(self) -> bool:
        """Close the oldest connection still waiting for its first frame, if any."""
        for task, writer in self._unstarted.items():
            del self._unstarted[task]
            writer.transport.abort()
            log.warning("connection_evicted", reason="max_connections reached; idle client")
            return True
        return False

    def _started(self) -> None:
        """Called once a connection's first frame is in: it may no longer be evicted."""
        task = asyncio.current_task()
        if task is not None:
            self._unstarted.pop(task, None)

    async def _serve_pam(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid, uid, _ = peer_credentials(writer)
        cfg = self.ctx.config
        # every prompt may take prompt_timeout plus the back-off delay; one more prompt
        # for the "press Enter" after enrolment or a low-codes warning
        per_prompt = cfg.login.prompt_timeout + cfg.lockout.max_delay + 5
        deadline = START_TIMEOUT + (cfg.login.max_attempts + 1) * per_prompt
        session = LoginSession(self.ctx, reader, writer, peer=f"pid={pid},uid={uid}")
        async with asyncio.timeout(deadline):
            await session.run(on_start=self._started)

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _, uid, _ = peer_credentials(writer)
        async with asyncio.timeout(CONTROL_DEADLINE) as deadline:
            try:
                frame = await read_frame(reader)
            except ProtocolError as exc:
                log.warning("control_protocol_error", uid=uid, reason=str(exc))
                await self.control.audit_protocol_error(uid, str(exc))
                return
            if frame is None:
                return
            self._started()
            response = await self.control.handle(frame, uid)
            if not isinstance(response, dict):
                deadline.reschedule(None)
                await self._stream(response, reader, writer)
                return
            try:
                data = encode(T.RESPONSE, json.dumps(response))
            except ProtocolError as exc:  # too large for one frame: say so, never go silent
                log.error("control_response_too_large", uid=uid, error=str(exc))
                data = encode(T.RESPONSE, json.dumps({
                    "ok": False, "error": "unavailable",
                    "message": "the answer is too large for one frame; narrow the request",
                }))
            writer.write(data)
            await writer.drain()

    # --- streamed control answers (audit_query, audit_follow) ---

    async def _stream(
        self,
        frames: AsyncGenerator[dict[str, Any], None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Write each response object as its own frame until the stream ends or the client
        leaves (EOF, or any byte: the client sends nothing after its request)."""

        async def pump() -> None:
            async for response in frames:
                writer.write(encode(T.RESPONSE, json.dumps(response)))
                await writer.drain()

        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        sending = asyncio.ensure_future(pump())
        leaving = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({sending, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._streams.discard(task)
            for future in (sending, leaving):
                future.cancel()
            await asyncio.gather(sending, leaving, return_exceptions=True)
            await frames.aclose()
        if sending.done() and not sending.cancelled() and sending.exception() is not None:
            error = sending.exception()
            if not isinstance(error, ConnectionError):
                log.error("control_stream_failed", error=repr(error))

    async def stop(self) -> None:
        """Stop accepting, let logins in flight finish briefly, cancel the rest."""
        for server in self._servers:
            server.close()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            await self.control.flush_refusals(everything=True)
        for path in self._paths:
            path.unlink(missing_ok=True)
        for task in self._streams:  # followers would wait forever; they are not logins
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("shutdown_cancelled", connections=len(pending),
                            reason=f"still open after {SHUTDOWN_GRACE:g}s")
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()

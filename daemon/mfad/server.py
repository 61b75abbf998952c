"""The three listening sockets, one task per connection, bounded shutdown.

The PAM socket is 0600 root (only root processes such as sshd's monitor, login
and su may start a login check); the control socket is 0666 and every request
on it is authorised by the caller's SO_PEERCRED uid in control.py. The user
PAM socket is 0666 too, for PAM programs that run as the user (screen
lockers): there a login may name only the peer's own account (session.py,
`own_uid`), so it checks nothing a user could not already check with `mfa`.
Its connections are a pool of their own with a per-uid cap, like the control
socket's: no local user can crowd out logins on the root socket.

Each connection gets a hard deadline. Each socket has its own pool of at most
``max_connections``: the control socket is open to every local user, so
nothing done there may touch a login. In a pool at its cap a new connection
evicts the oldest one that has not yet sent its first frame: clients that
connect and say nothing (or trickle) cannot starve real logins, and no
conversation under way is cut. A user other than root holds at most
``CONTROL_PER_UID`` connections to each of the two 0666 sockets at once. A
connection to either PAM socket turned away or evicted is answered ``R U``
first: a silent close before the first frame is what ``fail=open`` turns into
a skip.

A control op may answer with a stream of frames (``mfa audit --follow``): such
a connection is exempt from the control deadline and lasts until its client
closes it; at shutdown it is ended at once instead of holding the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from mfa_wire.control import encode_response, failure
from mfa_wire.errors import ErrorCode, ProtocolError
from mfa_wire.events import Event, Reason
from mfa_wire.events import Outcome as Recorded
from mfa_wire.frametypes import Outcome, T
from mfa_wire.framing import encode, read_frame
from mfad import ratelimit
from mfad.context import Context
from mfad.control import ControlHandler
from mfad.conversation import START_TIMEOUT
from mfad.errors import MfaError
from mfad.session import LoginSession

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
CONTROL_PER_UID = 16
"""Control (or user PAM) connections one user (not root) may hold open at once: enough for any
script."""


@dataclass(slots=True)
class _Pool:
    """The connections of one socket."""

    kind: str  # "pam" | "pam-user" | "control"
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # connections that have not finished their first frame, oldest first
    unstarted: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)
    per_uid: dict[int, int] = field(default_factory=dict)  # open connections by uid (not root)


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


def _turn_away(pool: _Pool, writer: asyncio.StreamWriter) -> None:
    """Close a connection we will not serve; a login is told UNAVAILABLE, never nothing."""
    if pool.kind != "control":
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(encode(T.RESULT, Outcome.UNAVAILABLE.value))
        writer.close()
    else:
        writer.transport.abort()


def _evict_one(pool: _Pool) -> bool:
    """Turn away the oldest connection of `pool` still waiting for its first frame, if any."""
    for task, writer in pool.unstarted.items():
        del pool.unstarted[task]
        _turn_away(pool, writer)
        log.warning(
            "connection_evicted", socket=pool.kind, reason="max_connections reached; idle client"
        )
        return True
    return False


async def _record_unfinished(session: LoginSession, reason: str) -> None:
    """Every login that got as far as naming its user has a ``login`` record, whatever
    ended it: mfad paused past the module's timeout (SIGSTOP, a stall) then killed by
    its own deadline, a write to the module's closed socket, a shutdown or a bug. The
    session writes the outcome itself whenever it can; this catches the rest."""
    if "user" in session.fields and Event.LOGIN not in session.trail.written:
        told = Recorded.FAILURE if reason == Reason.PROTOCOL_ERROR else Recorded.ABORTED
        await session.trail.record_quietly(Event.LOGIN, outcome=told, reason=reason)


class Server:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.control = ControlHandler(ctx)
        self._servers: list[asyncio.Server] = []
        self._pools = (_Pool("pam"), _Pool("control"), _Pool("pam-user"))
        self._paths: list[Path] = []
        self._streams: set[asyncio.Task[None]] = set()  # streamed control answers
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.ctx.config
        for path, mode, serve, pool in (
            (cfg.pam_socket, 0o600, self._serve_pam, self._pools[0]),
            (cfg.control_socket, 0o666, self._serve_control, self._pools[1]),
            (cfg.pam_user_socket, 0o666, self._serve_pam_user, self._pools[2]),
        ):
            sock = bind_unix(path, mode)
            self._paths.append(path)
            self._servers.append(
                await asyncio.start_unix_server(
                    self._admit(serve, pool),
                    sock=sock,
                    limit=2**17,
                    backlog=LISTEN_BACKLOG,
                )
            )
        self._flusher = asyncio.create_task(self._flush_refusals())

    async def _flush_refusals(self) -> None:
        """Write the counts of coalesced refusals soon after their window ends."""
        while True:
            await asyncio.sleep(ratelimit.WINDOW / 4)
            await self.control.flush_refusals()

    def _admit(
        self,
        serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        pool: _Pool,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        """Wrap a handler: connection caps, task tracking, and the writer always closed."""

        async def admitted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            uid = peer_credentials(writer)[1] if pool.kind != "pam" else 0
            if uid and pool.per_uid.get(uid, 0) >= CONTROL_PER_UID:
                log.warning(
                    "connection_refused",
                    uid=uid,
                    reason=f"{CONTROL_PER_UID} {pool.kind} connections open for this uid",
                )
                _turn_away(pool, writer)
                return
            if len(pool.tasks) >= self.ctx.config.max_connections and not _evict_one(pool):
                log.warning(
                    "connection_refused", socket=pool.kind, reason="max_connections reached"
                )
                _turn_away(pool, writer)
                return
            task = asyncio.current_task()
            assert task is not None
            pool.tasks.add(task)
            pool.unstarted[task] = writer
            if uid:
                pool.per_uid[uid] = pool.per_uid.get(uid, 0) + 1
            try:
                await serve(reader, writer)
            except TimeoutError:
                log.warning("connection_deadline", reason="connection held too long")
            except (ConnectionError, BrokenPipeError):
                pass  # the peer left; its session already recorded what happened
            except Exception:  # a bug: log it now, not when the task is collected
                log.exception("connection_internal_error")
            finally:
                pool.tasks.discard(task)
                pool.unstarted.pop(task, None)
                if uid:
                    left = pool.per_uid.pop(uid) - 1
                    if left:
                        pool.per_uid[uid] = left
                writer.close()

        return admitted

    def _started(self) -> None:
        """Called once a connection's first frame is in: it may no longer be evicted."""
        task = asyncio.current_task()
        if task is not None:
            for pool in self._pools:
                pool.unstarted.pop(task, None)

    async def _serve_pam(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._login(reader, writer, user_socket=False)

    async def _serve_pam_user(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._login(reader, writer, user_socket=True)

    async def _login(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, user_socket: bool
    ) -> None:
        """One login; on the user socket only for the peer's own account."""
        pid, uid, _ = peer_credentials(writer)
        cfg = self.ctx.config
        # every prompt may take prompt_timeout plus the back-off delay; one more prompt
        # for the "press Enter" after enrolment or a low-codes warning
        per_prompt = cfg.login.prompt_timeout + cfg.lockout.max_delay + 5
        deadline = START_TIMEOUT + (cfg.login.max_attempts + 1) * per_prompt
        session = LoginSession(
            self.ctx,
            reader,
            writer,
            peer=f"pid={pid},uid={uid}",
            own_uid=uid if user_socket else None,
        )
        ended: str = Reason.DEADLINE  # what the outcome record says if run() does not return
        try:
            async with asyncio.timeout(deadline):
                await session.run(on_start=self._started)
            # run() returned without an outcome only after a broken conversation, which it
            # answered FAILURE: that is the login's outcome
            ended = Reason.PROTOCOL_ERROR
        except asyncio.CancelledError:
            ended = Reason.SHUTDOWN
            raise
        except TimeoutError:  # an OSError too: named first
            raise
        except OSError:  # ConnectionError, BrokenPipeError: the module's socket broke
            ended = Reason.PEER_GONE
            raise
        except Exception:
            ended = Reason.INTERNAL_ERROR
            raise
        finally:
            await _record_unfinished(session, ended)

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
                data = encode_response(response)
            except ProtocolError as exc:  # too large for one frame: say so, never go silent
                log.error("control_response_too_large", uid=uid, error=str(exc))
                data = encode_response(
                    failure(
                        ErrorCode.UNAVAILABLE,
                        "the answer is too large for one frame; narrow the request",
                    )
                )
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
                writer.write(encode_response(response))
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

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        return set().union(*(pool.tasks for pool in self._pools))

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
                log.warning(
                    "shutdown_cancelled",
                    connections=len(pending),
                    reason=f"still open after {SHUTDOWN_GRACE:g}s",
                )
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()

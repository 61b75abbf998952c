"""Control requests from `mfa`: one JSON request, one JSON response per connection.

Authorisation is by the caller's kernel-reported uid (SO_PEERCRED), never by
anything in the request: root and members of ``admin_group`` may act on
anyone, any other user only on the account whose NSS uid is their own
(accounts.py). Requests from users who are not administrators are bounded
per uid, and repeated refusals are coalesced into one record (ratelimit.py).
Refusals are audited. RequestErrors become ``{"ok": false, ...}`` here and
nowhere else; other exceptions become a generic ``unavailable``.

Most ops answer with one response object. The audit ops ``audit_query`` and
``audit_follow`` answer with a stream of them (an async iterator): the server
writes each as its own frame, and errors inside the stream still pass through
this module's one boundary (``_guarded``).

The codec (request and response objects to and from frames, and the one frame
budget by which a streamed answer is chunked) is mfa_wire.control's, shared with
`mfa`. ``enroll_begin`` is AccountOps's with the QR code added here, drawn by
mfad (qrtext) as at a login, so that `mfa` draws nothing itself.
"""

from __future__ import annotations

import asyncio
import collections
import grp
import hmac
import json
import os
import pwd
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from mfa_wire.control import decode_request, failure, json_chunks
from mfa_wire.errors import BadMessage, ErrorCode
from mfa_wire.events import Event, Outcome
from mfa_wire.framing import Frame
from mfad import __version__, auditread, seal, times
from mfad.accounts import AccountOps, Caller
from mfad.audit import SealingActive
from mfad.context import Context
from mfad.emailops import EmailOps
from mfad.errors import (
    AuditError,
    Forbidden,
    MfaError,
    RateLimited,
    RequestError,
    StoreError,
)
from mfad.qrtext import render_qr
from mfad.ratelimit import Budget, Coalescer
from mfad.secretbox import SecretBox
from mfad.tokenops import TokenOps

log = structlog.get_logger("mfad.control")

# Reading the audit trail is for administrators; these ops name no account.
AUDIT_OPS = frozenset({"audit_query", "audit_follow", "audit_verify", "audit_summary"})
# Starting the sealing makes the trust root for the whole trail: root only, not the admin group.
ROOT_OPS = frozenset({"audit_seal_init"})

Response = dict[str, Any] | AsyncGenerator[dict[str, Any], None]


IDENTITY_TTL = 2.0
"""Seconds a caller's name and admin status are reused: a flood of requests from one uid
costs one NSS lookup per interval, and a change of group membership applies within it."""


def identify(uid: int, admin_group: str) -> Caller:
    """Who is asking: name from NSS, admin if root or in the admin group (NSS too)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Caller(uid, f"uid:{uid}", uid == 0)
    is_admin = uid == 0
    if admin_group and not is_admin:
        try:
            gid = grp.getgrnam(admin_group).gr_gid
            is_admin = gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
        except KeyError:
            is_admin = False
    return Caller(uid, entry.pw_name, is_admin)


class ControlHandler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        accounts = AccountOps(ctx)
        self._accounts = accounts
        self._budget = Budget()
        self._coalescer = Coalescer()
        self._callers: dict[int, tuple[Caller, float]] = {}
        email = EmailOps(accounts)
        self._self_service = {*accounts.self_service, *email.self_service}
        self._ops: dict[str, Callable[[Caller, dict[str, Any]], Awaitable[Response]]] = {
            **accounts.self_service,
            **email.self_service,
            **accounts.admin,
            **TokenOps(accounts).admin,
            "enroll_begin": self.enroll_begin,
            "audit_query": self.audit_query,
            "audit_follow": self.audit_follow,
            "audit_verify": self.audit_verify,
            "audit_summary": self.audit_summary,
            "metrics": self.metrics,
            "health": self.health,
            "audit_seal_init": self.audit_seal_init,
        }

    async def handle(self, frame: Frame, uid: int) -> Response:
        """Turn one REQUEST frame into a response object (or a stream of them).

        The single error boundary: every refusal or failure becomes an
        ``{"ok": false}`` response here or, inside a stream, in ``_guarded``.
        """
        op = "?"
        request: dict[str, Any] = {}
        try:
            caller = await self._identify(uid)
        except Exception:  # NSS failed for the caller itself: no answer can be authorised
            log.exception("control_internal_error", op=op, uid=uid)
            return failure(
                ErrorCode.UNAVAILABLE,
                "mfad cannot tell who is asking (NSS failed); its log says why",
            )
        try:
            if not caller.is_admin and not self._budget.allow(uid):
                raise RateLimited("too many requests from this user; wait a minute and try again")
            try:
                request = decode_request(frame)
            except BadMessage as exc:
                raise RequestError(str(exc)) from None
            name = request.get("op")
            handler = self._ops.get(name) if isinstance(name, str) else None
            if handler is None:
                # the name is the peer's text: it goes into no record and no answer
                raise RequestError("unknown operation; see docs/protocol.md for the ops")
            op = str(request["op"])
            # self-service ops authorise their target themselves (AccountOps.target)
            if op not in self._self_service and not caller.is_admin:
                what = "read the audit trail" if op in AUDIT_OPS else f"use `mfa {op}`"
                raise Forbidden(f"only an administrator may {what}")
            if op in ROOT_OPS and caller.uid != 0:
                raise Forbidden("only root may start the audit trail's sealing")
            result = await handler(caller, request)
            if not isinstance(result, dict):
                return self._guarded(caller, op, result)
            return {"ok": True, **result}
        except (RequestError, StoreError, AuditError) as exc:
            return await self._failure(caller, op, exc, _targets_named(request))
        except Exception:  # a bug: say so in the log, answer the client, keep serving
            log.exception("control_internal_error", op=op, uid=uid)
            return failure(ErrorCode.UNAVAILABLE, "mfad failed on this request; its log says why")

    async def _failure(
        self, caller: Caller, op: str, exc: MfaError, target: str | None = None
    ) -> dict[str, Any]:
        """The response for a refused or failed request; refusals are audited."""
        if isinstance(exc, RequestError):
            await self._audit_refusal(caller, op, exc, target)
            return failure(exc.code, str(exc))
        log.error("control_unavailable", op=op, error=str(exc))
        self.ctx.metrics.failed(exc)
        return failure(
            ErrorCode.UNAVAILABLE, "mfad cannot reach its store or audit log; see the daemon's log"
        )

    async def _guarded(
        self, caller: Caller, op: str, frames: AsyncIterator[dict[str, Any]]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A stream's frames; a failure inside it ends it with one ``{"ok": false}`` frame."""
        try:
            async for frame in frames:
                yield frame
        except (RequestError, StoreError, AuditError) as exc:
            yield await self._failure(caller, op, exc)

    async def _identify(self, uid: int) -> Caller:
        now = time.monotonic()
        cached = self._callers.get(uid)
        if cached is not None and now - cached[1] < IDENTITY_TTL:
            return cached[0]
        caller = await asyncio.to_thread(identify, uid, self.ctx.config.admin_group)
        if len(self._callers) > 4096:  # uids come and go; the cache must not grow with them
            self._callers.clear()
        self._callers[uid] = (caller, now)
        return caller

    async def _audit_refusal(
        self, caller: Caller, op: str, exc: MfaError, target: str | None
    ) -> None:
        """A user's like refusals: one record per run (ratelimit.Coalescer), the first in full."""
        await self.flush_refusals()
        code = exc.code if isinstance(exc, RequestError) else "error"
        # an administrator's refusals are each kept: they cannot be a flood from below
        if not caller.is_admin and not self._coalescer.first((caller.uid, op, code)):
            return
        try:
            await self.ctx.audit.record(
                Event.CONTROL,
                outcome=Outcome.REFUSED,
                op=op,
                reason=type(exc).__name__,
                actor_uid=caller.uid,
                actor=caller.name,
                user=target,
                message=_bounded(str(exc)),
            )
        except AuditError as err:
            log.error("audit_unwritable", error=str(err))

    async def audit_protocol_error(self, uid: int, reason: str) -> None:
        """A broken control frame, coalesced like a refusal (any local user can send one)."""
        await self.flush_refusals()
        if not self._coalescer.first((uid, "?", "protocol_error")):
            return
        try:
            await self.ctx.audit.record(
                Event.PROTOCOL_ERROR,
                outcome=Outcome.ERROR,
                socket="control",
                actor_uid=uid,
                reason=reason,
            )
        except AuditError as err:
            log.error("audit_unwritable", error=str(err))

    async def flush_refusals(self, *, everything: bool = False) -> None:
        """Write one `control_refusals` record for each run of repeats whose window ended."""
        for (uid, op, code), count, first_at in self._coalescer.due(everything=everything):
            try:
                await self.ctx.audit.record(
                    Event.CONTROL_REFUSALS,
                    outcome=Outcome.REFUSED,
                    actor_uid=uid,
                    op=op,
                    error=code,
                    repeated=count,
                    since=times.iso(first_at),
                    reason=f"{count} more like refusals after the first, not written one by one",
                )
            except AuditError as err:
                log.error("audit_unwritable", error=str(err))

    # --- operations ---

    async def enroll_begin(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """AccountOps.enroll_begin's offer, with its URI drawn as a QR code for `mfa enroll`
        (``qr``; ``invert: true`` for a light terminal): the one drawing, qrtext's, that a
        login at the PAM socket shows too, so the CLI needs no QR code library of its own."""
        invert = request.get("invert", False)
        if not isinstance(invert, bool):
            raise RequestError("`invert` must be true or false")
        offer = await self._accounts.enroll_begin(caller, request)
        return {**offer, "qr": render_qr(offer["uri"], invert=invert)}

    async def health(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """For `mfa doctor` (administrators): the version, whether the key file on disk is
        still the key the store's secrets were sealed with (mfad checked it at start; a file
        replaced since would stop the next start), and the settings in force that name
        files, sockets and services. No secret, no key material, no account."""
        cfg = self.ctx.config
        stored = await self.ctx.store.get_key_check()
        try:
            on_disk = await asyncio.to_thread(SecretBox.from_file, cfg.key_file)
        except MfaError as exc:
            key_check, key_message = "unreadable", str(exc)
        else:
            matches = stored is not None and hmac.compare_digest(stored, on_disk.check_value())
            key_check = "ok" if matches else "mismatch"
            key_message = (
                f"{cfg.key_file} is the key the store's secrets were sealed with"
                if matches
                else f"{cfg.key_file} is not the key the store's secrets were sealed with: "
                "mfad will refuse to start with it; restore the original key file"
            )
        return {
            "version": __version__,
            "pid": os.getpid(),
            "key_check": key_check,
            "key_message": key_message,
            "config": {
                "mode": cfg.mode,
                "services": dict(cfg.services),
                "pam_socket": str(cfg.pam_socket),
                "pam_user_socket": str(cfg.pam_user_socket),
                "control_socket": str(cfg.control_socket),
                "store_backend": cfg.store_backend,
                "store_path": str(cfg.store_path),
                "store_password_file": str(cfg.store_password_file or ""),
                "smtp_password_file": str(cfg.smtp.password_file or ""),
                "audit_seal_key": str(cfg.audit_seal_key),
                "key_file": str(cfg.key_file),
                "audit_path": str(cfg.audit_path),
                "totp_window": cfg.totp.window,
                "totp_period": cfg.totp.period,
            },
        }

    # --- audit trail (mfa audit): read-only, administrators only ---
    # The files are read by auditread in a worker thread, never on the event loop.

    async def _read_trail(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, self.ctx.audit.path, *args)
        except (OSError, auditread.LogReadError) as exc:
            raise AuditError(f"cannot read the audit trail: {exc}") from exc

    async def audit_query(
        self, caller: Caller, request: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Matching records, oldest first, in as many frames as they need."""
        flt, limit = _audit_filter(request)
        if self._all_hosts(request):
            return _query_frames(await self._fleet_query(flt, limit))
        found: auditread.QueryResult = await self._read_trail(auditread.query, flt, limit)
        return _query_frames(found)

    def _all_hosts(self, request: dict[str, Any]) -> bool:
        """Whether the request asks for every host's records (the fleet's audit table)."""
        wanted = request.get("all_hosts", False)
        if type(wanted) is not bool:
            raise RequestError("all_hosts must be true or false")
        if wanted and not self.ctx.store.shared:
            raise RequestError(
                "--all-hosts reads the fleet's audit table, which only a shared store has "
                "(store.backend: postgresql); this host keeps its own store"
            )
        return wanted

    async def _fleet_records(self, flt: auditread.Filter) -> AsyncIterator[dict[str, Any]]:
        since, until = (None if t is None else t.timestamp() for t in (flt.since, flt.until))
        async for line in self.ctx.store.audit_lines(since, until, flt.fields):
            record = auditread.parse(line.encode())
            if record is not None:
                yield record

    async def _fleet_query(self, flt: auditread.Filter, limit: int | None) -> auditread.QueryResult:
        kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        matched = 0
        async for record in self._fleet_records(flt):
            matched += 1
            kept.append(record)
        return auditread.QueryResult(list(kept), matched, 0)

    async def audit_follow(
        self, caller: Caller, request: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Matching recent records, then every new matching record as it is written."""
        flt, limit = _audit_filter(request)
        return self._follow_frames(flt, limit)

    async def _follow_frames(
        self, flt: auditread.Filter, limit: int | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        # Subscribed before the file is read, so no record falls between the two;
        # a record seen in both is recognised by its sequence number.
        queue = self.ctx.audit.subscribe()
        try:
            found: auditread.QueryResult = await self._read_trail(auditread.query, flt, limit)
            for chunk in _chunks(found.records):
                yield {"ok": True, "records": chunk, "more": True}
            yield {
                "ok": True,
                "records": [],
                "more": True,
                "following": True,
                "matched": found.matched,
            }
            last = found.last_seq
            while True:
                record = json.loads(await queue.get())
                seq = record.get("seq")
                if not isinstance(seq, int) or seq <= last:
                    continue
                if last and seq > last + 1:  # the queue was full: this follower fell behind
                    yield {"ok": True, "records": [], "more": True, "missed": seq - last - 1}
                last = seq
                if flt.matches(record):
                    for chunk in _chunks([record]):
                        yield {"ok": True, "records": chunk, "more": True}
        finally:
            self.ctx.audit.unsubscribe(queue)

    async def metrics(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """The counters in Prometheus' text format (no names or addresses: metrics.py)."""
        return {"text": self.ctx.metrics.render()}

    async def audit_verify(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Walk the hash chain through every file, and each record's seal if the request
        carries the verification key; name the first bad record. The key is used for this
        walk and dropped: it is never logged, recorded or stored. With all_hosts, walk
        each host's chain in the fleet's table instead."""
        if self._all_hosts(request):
            hosts = []
            for host in await self.ctx.store.audit_hosts():
                walk = auditread.ChainCheck(host)
                async for seq, line in self.ctx.store.audit_chain(host):
                    if not walk.add(seq, line):
                        break
                hosts.append(walk.verdict())
            return {"hosts": hosts}
        text = request.get("key")
        key = None
        if text is not None:
            try:
                if not isinstance(text, str):
                    raise seal.SealError("`key` must be text")
                key = seal.VerificationKey.parse(text)
            except seal.SealError as exc:
                raise RequestError(f"not a verification key: {exc}") from None
        await self.ctx.audit.tick()  # an epoch that has just ended is sealed before the walk
        now_us = int(self.ctx.clock() * 1_000_000)
        verdict: dict[str, Any] = await self._read_trail(auditread.verify, key, now_us)
        return verdict

    async def audit_seal_init(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Start sealing (root only); the verification key, shown once and kept nowhere."""
        force = request.get("force", False)
        if not isinstance(force, bool):
            raise RequestError("`force` must be true or false")
        length = self.ctx.config.audit_seal_epoch
        try:
            vk = await self.ctx.audit.seal_init(
                length, force=force, actor_uid=caller.uid, actor=caller.name
            )
        except SealingActive as exc:
            raise RequestError(str(exc)) from None
        text = vk.text()
        return {
            "verification_key": text,
            "qr": render_qr(text),
            "seal_start": seal.time_text(vk.epochs.begins(0)),
            "epoch_seconds": length,
        }

    async def audit_summary(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        """Failures, locks, skips, control actions and unenrolled users since a time."""
        since = times.from_request(request, "since")
        accounts = await self.ctx.store.list_accounts()
        now = datetime.fromtimestamp(self.ctx.clock(), UTC)
        if self._all_hosts(request):
            records = [r async for r in self._fleet_records(auditread.Filter(since=since))]
            fleet: dict[str, Any] = await asyncio.to_thread(
                auditread.summarise_records, records, since, now, accounts
            )
            return fleet
        summary: dict[str, Any] = await self._read_trail(auditread.summarise, since, now, accounts)
        return summary


def _audit_filter(request: dict[str, Any]) -> tuple[auditread.Filter, int | None]:
    """The filters of audit_query / audit_follow; a limit of 0 or none means all."""
    fields: dict[str, str] = {}
    for name in auditread.FILTER_FIELDS:
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 1024:
            raise RequestError(f"{name} must be a string of at most 1024 characters")
        fields[name] = value
    limit = request.get("limit")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise RequestError("limit must be a whole number, 0 or more")
    flt = auditread.Filter(
        fields, times.from_request(request, "since"), times.from_request(request, "until")
    )
    return flt, limit or None


MAX_MESSAGE = 512
"""Characters of a refusal's message kept in its record: it may quote the peer's text."""


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def _targets_named(request: dict[str, Any]) -> str | None:
    """Who a refused request was about, for its audit record (``mfa audit --user``)."""
    users = request.get("users") if request else None
    named = [request.get("user"), *(users if isinstance(users, list) else [])] if request else []
    names = [n for n in named if isinstance(n, str) and n]
    if isinstance(request.get("group"), str):
        names.append(f"group:{request['group']}")
    return ",".join(names)[:1024] or None


def _chunks(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Records in groups that each fit one frame (mfa_wire.control.FRAME_BUDGET); a record
    too large alone is summarised."""
    return json_chunks(records, oversize=_summary)


def _summary(record: dict[str, Any], length: int) -> dict[str, Any]:
    """What is sent of a record too large for a frame: what it was, and its size."""
    short = {k: record.get(k) for k in ("seq", "time", "event", "outcome", "user")}
    short["oversize"] = length
    return short


async def _query_frames(found: auditread.QueryResult) -> AsyncGenerator[dict[str, Any], None]:
    for chunk in _chunks(found.records):
        yield {"ok": True, "records": chunk, "more": True}
    yield {"ok": True, "records": [], "more": False, "matched": found.matched}

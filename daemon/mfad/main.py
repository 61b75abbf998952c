"""`mfad`: start the daemon, or create its key file, or check a config file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog
import structlog.tracebacks
import uvloop

from mfa_wire.events import Event, Outcome
from mfad import __version__, config
from mfad.audit import AuditLog
from mfad.auditforward import Forwarder
from mfad.auditmirror import AuditMirror
from mfad.backends import check_key, open_store
from mfad.context import Context
from mfad.errors import ConfigError, MfaError
from mfad.lockout import Guard
from mfad.mailer import Mailer
from mfad.metrics import Metrics
from mfad.migrate import migrate_store
from mfad.notify import Notifier
from mfad.secretbox import SecretBox, generate_key_file
from mfad.server import Server

log = structlog.get_logger("mfad")


def _configure_logging() -> None:
    """Operational logs: one JSON object per line on stderr (journald under systemd)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            # log.exception's traceback as structured data: without it a caught bug
            # leaves only its event name behind. Never with the frames' local variables
            # (structlog's default): they hold codes, keys and recovery codes.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:  # the supervisor went away; nothing to tell
            log.warning("notify_failed", state=state, error=exc.strerror)


def _raise_fd_limit(wanted: int) -> None:
    """Each connection is a descriptor: allow max_connections plus room for files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(config_path: Path) -> None:
    os.umask(0o077)  # the store, its WAL and the audit log are for root's eyes only
    cfg = config.load(config_path)
    _raise_fd_limit(cfg.max_connections + 256)
    for warning in config.warnings(cfg):
        log.warning("config_warning", warning=warning)
    box = SecretBox.from_file(cfg.key_file)
    store = await open_store(cfg)
    try:
        await check_key(store, box, cfg.key_file)
    except MfaError:
        await store.close()
        raise
    metrics = Metrics(lambda: frozenset(ctx.config.services))
    mailer = Mailer(lambda: ctx.config.smtp)
    notifier = Notifier(lambda: ctx.config, mailer)

    def observe(event: str, fields: dict[str, Any]) -> None:  # each record, as written
        metrics.observe(event, fields)
        notifier.observe(event, fields)

    audit = AuditLog(
        cfg.audit_path,
        host=cfg.audit_host,
        required=lambda: ctx.config.audit_required,
        observer=observe,
        on_error=metrics.audit_failed,
        seal_key=cfg.audit_seal_key,
        forward=Forwarder(cfg.audit_forward, cfg.audit_forward_socket),
    )
    ctx = Context(
        cfg, store, box, audit, Guard(store, lambda: ctx.config.lockout), metrics, mailer=mailer
    )
    await audit.open()  # after ctx: the records it may write are observed
    notifier.start(audit)
    if cfg.metrics_listen:
        try:
            metrics.serve(cfg.metrics_listen)
        except OSError as exc:
            await store.close()
            raise ConfigError(f"metrics.listen {cfg.metrics_listen}: {exc.strerror}") from exc
    mirror = AuditMirror(audit, store) if store.shared else None
    mirroring = asyncio.create_task(mirror.run()) if mirror else None
    server = Server(ctx)
    await server.start()
    await audit.record(
        Event.DAEMON_START, outcome=Outcome.SUCCESS, version=__version__, pid=os.getpid()
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(ctx, config_path)))
    _notify("READY=1")
    log.info("ready", pam_socket=str(cfg.pam_socket), control_socket=str(cfg.control_socket))
    watchdog = _watchdog_interval()
    pinging = asyncio.create_task(_ping_watchdog(watchdog)) if watchdog else None
    await stop.wait()
    if pinging is not None:
        pinging.cancel()

    _notify("STOPPING=1")
    await server.stop()
    try:
        await audit.record(Event.DAEMON_STOP, outcome=Outcome.SUCCESS, pid=os.getpid())
    except MfaError as exc:
        log.error("audit_unwritable", error=str(exc))
    await notifier.close()  # what is noted gets one last try, within smtp.timeout
    if mirror is not None and mirroring is not None:
        mirroring.cancel()
        # the last records (this stop) go to the fleet's table if the database answers soon
        with contextlib.suppress(MfaError, TimeoutError):
            async with asyncio.timeout(3):
                await mirror.catch_up()
    await audit.close()
    await store.close()


def _watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set (WatchdogSec=), if it set one for us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a wrapper's)
    return int(usec) / 2e6


async def _ping_watchdog(interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a loop that stalls (a blocking call, a lock
    never released) stops the pings, and systemd kills and restarts mfad. A thread could
    not tell; this task runs only when the loop does."""
    while True:
        _notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _reload(ctx: Context, config_path: Path) -> None:
    """SIGHUP: take a valid new config, keep the running one on any error; reopen the log."""
    await ctx.audit.reopen()  # first: log rotation must not hinge on the config's validity
    try:
        new = config.load(config_path)
    except MfaError as exc:
        log.error("reload_rejected", error=str(exc), reason="keeping the running config")
        await ctx.audit.record(Event.DAEMON_RELOAD, outcome=Outcome.FAILURE, reason=str(exc))
        return
    fixed = (
        "pam_socket",
        "pam_user_socket",
        "control_socket",
        "store_backend",
        "store_path",
        "store_dsn",
        "store_password_file",
        "key_file",
        "audit_path",
        "audit_host",
        "metrics_listen",
        "audit_seal_key",
        "audit_forward",
        "audit_forward_socket",
    )
    changed = [name for name in fixed if getattr(new, name) != getattr(ctx.config, name)]
    if changed:
        log.warning("reload_needs_restart", settings=changed)
    ctx.config = new
    for warning in config.warnings(new):
        log.warning("config_warning", warning=warning)
    await ctx.audit.record(Event.DAEMON_RELOAD, outcome=Outcome.SUCCESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfad", description="pam-mfa daemon")
    parser.add_argument(
        "--config",
        type=Path,
        default=config.DEFAULT_PATH,
        help="config file (default: %(default)s)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config file and exit"
    )
    parser.add_argument(
        "--generate-key",
        type=Path,
        metavar="PATH",
        help="create a new secret key file (mode 0600) and exit",
    )
    parser.add_argument("--version", action="version", version=f"mfad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    move = commands.add_parser(
        "migrate-store",
        help="copy every account, lock and history from a SQLite store into the "
        "PostgreSQL store the config names (mfad stopped)",
        description="Copy every account, lock and history from this host's SQLite store "
        "into the PostgreSQL store the config names, with no re-enrolment. Example: "
        "mfad --config /etc/mfad/mfad.yaml migrate-store --from /var/lib/mfad/mfad.db",
    )
    move.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="the SQLite store to copy (default: store.path in the config)",
    )
    move.add_argument(
        "--replace",
        action="store_true",
        help="replace what the target already holds (otherwise a non-empty target is refused)",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        if args.command == "migrate-store":
            cfg = config.load(args.config)
            source = args.source or cfg.store_path
            copied = asyncio.run(migrate_store(cfg, source, replace=args.replace))
            print(f"copied {source} into the PostgreSQL store:")
            for table, count in copied.items():
                print(f"  {table}: {count}")
        elif args.generate_key:
            generate_key_file(args.generate_key)
            print(f"created {args.generate_key}")
        elif args.check_config:
            for warning in config.warnings(config.load(args.config)):
                print(f"{args.config}: warning: {warning}", file=sys.stderr)
            print(f"{args.config}: ok")
        else:
            # uvloop (libuv) serves about twice the logins per core of asyncio's own loop
            uvloop.run(serve(args.config))
    except MfaError as exc:
        print(f"mfad: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

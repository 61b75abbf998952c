"""`mfad`: start the daemon, or create its key file, or check a config file."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import resource
import signal
import socket
import stat
import sys
from pathlib import Path

import structlog
import structlog.tracebacks
import uvloop

from mfa_wire.events import Event, Outcome
from mfad import __version__, config
from mfad.audit import AuditLog
from mfad.auditforward import Forwarder
from mfad.context import Context
from mfad.errors import KeyFileError, MfaError, StoreError
from mfad.lockout import Guard
from mfad.secretbox import SecretBox, generate_key_file
from mfad.server import Server
from mfad.store import SqliteStore, Store

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


async def open_store(cfg: config.Config) -> Store:
    """The configured backend, connected and migrated; StoreError if it cannot be."""
    if cfg.store_backend == "postgresql":
        # imported here: a host on SQLite never loads the PostgreSQL driver
        from psycopg.conninfo import make_conninfo

        from mfad.pgstore import PostgresStore

        dsn = cfg.store_dsn
        if cfg.store_password_file is not None:
            dsn = make_conninfo(dsn, password=_read_password(cfg.store_password_file))
        return await PostgresStore.open(dsn)
    return await SqliteStore.open(cfg.store_path)


def _read_password(path: Path) -> str:
    """The database password, from a file only root can read (like the key file)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read store.password_file {path}: {exc}") from exc
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise StoreError(
            f"{path} (store.password_file) must be owned by the daemon's user and mode 0600 "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )
    return text.strip("\n")


async def check_key(store: Store, box: SecretBox, key_file: Path) -> None:
    """Refuse a key file that is not the one the store's secrets were sealed with.

    The store keeps the key's check value from the first start; a store from before
    check values is tested by opening one sealed secret, then given one.
    """
    stored = await store.get_key_check()
    if stored is None:  # a store from before check values: does the key open its secrets?
        sample = await store.any_sealed_secret()
        if sample is not None:
            try:
                box.open(*sample)
            except StoreError:
                raise KeyFileError(_wrong_key(key_file)) from None
        await store.set_key_check(box.check_value())
    elif not hmac.compare_digest(stored, box.check_value()):
        raise KeyFileError(_wrong_key(key_file))


def _wrong_key(key_file: Path) -> str:
    return (
        f"{key_file} is not the key this store's secrets were sealed with; restore the "
        "original key file (mfad would otherwise refuse every login and count every "
        "recovery code as wrong)"
    )


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
    audit = AuditLog(
        cfg.audit_path,
        required=lambda: ctx.config.audit_required,
        seal_key=cfg.audit_seal_key,
        forward=Forwarder(cfg.audit_forward, cfg.audit_forward_socket),
    )
    await audit.open()
    ctx = Context(cfg, store, box, audit, Guard(store, lambda: ctx.config.lockout))
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
    await stop.wait()

    _notify("STOPPING=1")
    await server.stop()
    try:
        await audit.record(Event.DAEMON_STOP, outcome=Outcome.SUCCESS, pid=os.getpid())
    except MfaError as exc:
        log.error("audit_unwritable", error=str(exc))
    await audit.close()
    await store.close()


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
        "control_socket",
        "store_backend",
        "store_path",
        "store_dsn",
        "store_password_file",
        "key_file",
        "audit_path",
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
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        if args.generate_key:
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

"""A private PostgreSQL cluster for the tests: the `pg_cluster` fixture (session-scoped).

It runs Debian's server binaries (package `postgresql`, see scripts/test.sh) from
/usr/lib/postgresql/<version>/bin on a data directory in a temp dir, listening
on a Unix socket in that temp dir only (no TCP port), with trust authentication
for its one role. initdb refuses to run as root, so as root the cluster runs as
the `postgres` system user the package creates. The server is this process's
child (started directly, not daemonised by pg_ctl, so it is reaped here). At
teardown it is stopped and the temp dir removed: no process or file is left.

    def test_x(pg_cluster: PgCluster) -> None:
        dsn = pg_cluster.create_database()   # a fresh, empty database

PYTEST_DONT_REWRITE: a test module imports PgCluster before its pytest_plugins loads this
module as a plugin (as with fakeclock.py); nothing here asserts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROLE = "mfa"  # the cluster's superuser, which the tests connect as


def _bindir() -> Path:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0),
    )
    if not found:
        pytest.fail("no PostgreSQL server: install Debian's postgresql package (scripts/test.sh)")
    return found[-1].parent


class PgCluster:
    """A running private server; `create_database()` gives a DSN to a new database."""

    def __init__(self, root: Path, bindir: Path, run_as: list[str]) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.log = root / "server.log"
        self._bindir = bindir
        self._run_as = run_as
        self._numbers = itertools.count(1)
        self._server: subprocess.Popen[bytes] | None = None

    def _run(self, tool: str, *args: str) -> None:
        argv = [*self._run_as, str(self._bindir / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr}\n{log}")

    def start(self) -> None:
        """Create the cluster if there is none yet, then run its server (again)."""
        if not (self.data / "PG_VERSION").exists():
            self._init()
        self._serve()

    def _init(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            ROLE,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-sync",
        )

    def _serve(self) -> None:
        # the server is this process's child (not daemonised by pg_ctl), so that it is
        # reaped here when it ends
        with self.log.open("wb") as log:
            self._server = subprocess.Popen(
                [*self._run_as, str(self._bindir / "postgres"), "-D", str(self.data),
                 "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "max_connections=200", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    why = self.log.read_text()
                    raise RuntimeError(f"PostgreSQL did not start:\n{why}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster: sessions are ended), then reap it."""
        if self._server is None:
            return
        pidfile = self.data / "postmaster.pid"
        if self._server.poll() is None and pidfile.exists():
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)
        try:
            self._server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._server.kill()  # runuser; the server itself was told above
            self._server.wait()

    def _processes(self) -> list[int]:
        """The postmaster and every process it forked (its backends and helpers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the field after the ")" that ends the command name: state, then ppid
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    found.append(int(stat.parent.name))
        return found

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server frozen (SIGSTOP to it and its backends): a database host that
        stopped answering, with every connection still open; thawed on leaving."""
        stopped = self._processes()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} user={ROLE} dbname={dbname}"

    def create_database(self) -> str:
        """A new empty database on the cluster; its DSN."""
        name = f"t{next(self._numbers)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.dsn(name)


def _run_as(root: Path) -> list[str]:
    """The command prefix that runs the server's tools, and hands them `root`."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("postgres")  # created by Debian's postgresql package
    os.chown(root, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def private_cluster() -> Iterator[PgCluster]:
    root = Path(tempfile.mkdtemp(prefix="mfa-pg-"))
    try:
        root.chmod(0o755)  # the socket must be reachable by the (root) test process
        cluster = PgCluster(root, _bindir(), _run_as(root))
        cluster.socket_dir.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(cluster.socket_dir, pw.pw_uid, pw.pw_gid)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture() -> Iterator[PgCluster]:
    """A private PostgreSQL server for the whole session, removed at its end."""
    with private_cluster() as cluster:
        yield cluster

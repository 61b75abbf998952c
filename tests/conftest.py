"""Shared fixtures: the built PAM module, a real mfad in a temp dir, throwaway users.

Everything a fixture creates (processes, users, files) is removed at teardown:
the suite leaves the machine as it found it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml

from mfa_cli.client import DaemonClient
from mfad.model import PendingEnrolment, TokenParams
from mfad.secretbox import SecretBox
from mfad.store import SqliteStore

ROOT = Path(__file__).resolve().parent.parent

MakeUser = Callable[..., str]
"""The `make_user` fixture: `make_user(password=None)` makes a throwaway user, returns its name."""
MakeGroup = Callable[..., str]
"""The `make_group` fixture: `make_group(*members)` makes a throwaway group, returns its name."""
PamLogin = Callable[..., Any]
"""The `pam_login` fixture: `pam_login(user, answers, service=, rhost=)`, a pamtest.PamResult."""
MODULE_DIR = ROOT / "pam_module"


# Every secret, code and recovery code the suite hands out, and a copy of every daemon's
# logs: tests/test_zz_no_secrets_in_logs.py, which runs last, searches the one for the other.
SEEN: dict[str, set[str]] = {"secret": set(), "code": set(), "recovery code": set()}
LOG_ARCHIVE = Path(tempfile.gettempdir()) / f"pam-mfa-test-logs-{os.getpid()}"


def totp_now(secret: str, offset_steps: int = 0, *, digits: int = 6, period: int = 30) -> str:
    """The code an authenticator app would show, `offset_steps` periods from now."""
    otp = pyotp.TOTP(secret, digits=digits, interval=period)
    code = str(otp.at(time.time() + offset_steps * period))
    SEEN["secret"].add(secret)
    SEEN["code"].add(code)
    return code


def totp_from_uri(uri: str) -> pyotp.TOTP:
    """The authenticator an app makes of an otpauth:// URI (what a phone scans)."""
    otp = pyotp.parse_uri(uri)
    assert isinstance(otp, pyotp.TOTP), uri
    return otp


def _remember(response: dict[str, Any]) -> None:
    if isinstance(response.get("secret"), str):
        SEEN["secret"].add(response["secret"])
    for key in ("recovery_codes", "codes"):
        for code in response.get(key) or []:
            SEEN["recovery code"].add(code)


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(LOG_ARCHIVE, ignore_errors=True)


@pytest.fixture(scope="session")
def pam_module() -> Path:
    """pam_mfa.so built by its own Makefile, exactly as it ships."""
    subprocess.run(["make", "-s", "-C", str(MODULE_DIR)], check=True)
    return MODULE_DIR / "pam_mfa.so"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class Daemon:
    """A real mfad process with its own sockets, store, key and audit log under `tmp`."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = env or {}
        self.tmp.chmod(0o755)
        self.config_path = tmp / "mfad.yaml"
        self.pam_socket = tmp / "run" / "pam.sock"
        self.control_socket = tmp / "run" / "control.sock"
        self.db_path = tmp / "lib" / "mfad.db"
        self.key_path = tmp / "etc" / "secret.key"
        self.audit_path = tmp / "log" / "audit.jsonl"
        self.seal_key_path = tmp / "lib" / "audit-seal.key"
        self.stderr_path = tmp / "mfad.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base: dict[str, Any] = {
            "mode": "required",
            "sockets": {"pam": str(self.pam_socket), "control": str(self.control_socket)},
            "store": {"path": str(self.db_path)},
            "key_file": str(self.key_path),
            # the sealing key in the test's own directory; no copy to the machine's syslog
            "audit": {
                "path": str(self.audit_path),
                "seal_key": str(tmp / "lib" / "audit-seal.key"),
                "forward": "off",
            },
            "totp": {"issuer": "pam-mfa-test"},
            # no back-off delay unless a test is about it: it would only slow the suite
            "lockout": {"delay": 0},
        }

    def write_config(self, **overrides: Any) -> None:
        self.config_path.write_text(yaml.safe_dump(_merge(self.base, overrides)))

    def start(self, **overrides: Any) -> None:
        """Start mfad and return once it has said READY=1 over $NOTIFY_SOCKET.

        `self.env` is merged into the daemon's environment at every start (e.g.
        tests/nsswrap.py's preload).
        """
        self.write_config(**overrides)
        if not self.key_path.exists():
            subprocess.run(
                [sys.executable, "-m", "mfad", "--generate-key", str(self.key_path)],
                check=True,
                capture_output=True,
            )
        notify_path = self.tmp / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(notify_path)}
            with self.stderr_path.open("ab") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "mfad", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=env,
                )
            notify.settimeout(0.1)
            deadline = time.monotonic() + 15
            while True:  # READY=1, or mfad exited (a refused config or key), or 15 s
                try:
                    if notify.recv(4096) == b"READY=1":
                        break
                except TimeoutError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"mfad did not start:\n{self.stderr()}") from None
        notify_path.unlink()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM and wait: the daemon's own orderly shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, **overrides: Any) -> None:
        self.stop()
        self.start(**overrides)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One control request over the control socket, as the test's own uid (root): the
        daemon's first answer as it came, ``ok`` false too (`mfa`'s own client,
        DaemonClient.call)."""
        response = DaemonClient(self.control_socket, timeout=30).call(op, **fields)
        _remember(response)
        return response

    def mfa_as(
        self, user: str, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The installed `mfa` run as `user` (a real non-root uid, as the daemon sees it)
        against this daemon, `input` on its stdin; its directory is world-traversable for
        exactly this."""
        mfa = Path(sys.executable).with_name("mfa")
        return subprocess.run(
            ["runuser", "-u", user, "--", str(mfa), "--socket", str(self.control_socket), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def enroll(self, user: str) -> str:
        """Enrol and confirm `user`; returns the base32 secret.

        The confirming code is the previous step's, so the current step's code
        is still unused and a test can log in with it straight away.
        """
        begun = self.request("enroll_begin", user=user)
        assert begun["ok"], begun
        confirmed = self.request("enroll_confirm", user=user, code=totp_now(begun["secret"], -1))
        assert confirmed["ok"], confirmed
        return str(begun["secret"])

    def seed(self, user: str, secret: bytes, params: TokenParams | None = None) -> None:
        """Give `user` an active token with no step used yet, through mfad's own store code.

        Enrolling over the control socket marks the confirming code's step as
        used; tests of the acceptance window need a token with none used.
        """

        SEEN["secret"].add(base64.b32encode(secret).decode().rstrip("="))

        async def write() -> None:
            store = await SqliteStore.open(self.db_path)
            box = SecretBox.from_file(self.key_path)
            pending = PendingEnrolment(user, box.seal(user, secret), params or TokenParams(), 0.0)
            await store.begin_enrolment(pending)
            await store.activate(pending, step=0, now=time.time())
            await store.close()

        asyncio.run(write())

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]


@contextlib.contextmanager
def running_daemon(env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A started daemon in mode `required`, its files removed (logs archived) after.

    Its directory is under /tmp with mode 0755 (pytest's own tmp_path is 0700)
    so that tests may run `mfa` as an unprivileged user against the control socket.
    """
    tmp = Path(tempfile.mkdtemp(prefix="mfad-test-"))
    daemon = Daemon(tmp, env)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        keep = LOG_ARCHIVE / tmp.name
        keep.mkdir(parents=True, exist_ok=True)
        # the logs, not the .head file (a sequence number and a hash, no text)
        for log in [daemon.stderr_path, *daemon.audit_path.parent.glob("audit.jsonl*")]:
            if log.is_file() and log.suffix != ".head":
                shutil.copy(log, keep / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def mfad() -> Iterator[Daemon]:
    """A started daemon (`running_daemon`)."""
    with running_daemon() as daemon:
        yield daemon


@pytest.fixture
def pam_login(pam_module: Path, mfad: Daemon) -> PamLogin:
    """Log in through the real libpam (pam_wrapper) with pam_mfa.so talking to `mfad`.

    `pam_login(user, answers, service="sshd", rhost="192.0.2.1")` returns a
    pamtest.PamResult whose `name` is the module's own return code: libpam never
    returns PAM_IGNORE itself, so the stack lets only an ignore reach pam_echo,
    whose marker line is then read back as "PAM_IGNORE".
    """
    from pamtest import authenticate, write_service

    service_dir = mfad.tmp / "pam.d"
    marker = "pam_mfa returned PAM_IGNORE"
    stack = [
        f"auth [success=done ignore=ignore default=die] {pam_module} socket={mfad.pam_socket}",
        f"auth optional pam_echo.so {marker}",
        "auth required pam_deny.so",
    ]

    def login(
        user: str, answers: list[str], service: str = "sshd", rhost: str = "192.0.2.1"
    ) -> Any:
        write_service(service_dir, service, stack)
        result = authenticate(service_dir, service, user, answers, rhost=rhost)
        if marker in result.texts("info"):
            result = dataclasses.replace(result, name="PAM_IGNORE", messages=result.messages[:-1])
        return result

    return login


@pytest.fixture
def make_group() -> Iterator[MakeGroup]:
    """Factory for throwaway NSS groups with the given members, removed after."""
    created: list[str] = []

    def make(*members: str) -> str:
        name = "mfag" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))
        _run("groupadd", name)
        created.append(name)
        for member in members:
            _run("usermod", "--append", "--groups", name, member)
        return name

    yield make
    for name in created:
        subprocess.run(["groupdel", name], capture_output=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def make_user() -> Iterator[MakeUser]:
    """Factory for throwaway local users (with a home and optional password), removed after."""
    created: list[str] = []

    def make(password: str | None = None) -> str:
        name = "mfat" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))
        _run("useradd", "--create-home", "--shell", "/bin/sh", name)
        created.append(name)
        if password is not None:
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        return name

    yield make
    for name in created:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)

"""A private OpenSSH server for end-to-end login tests, and a scripted `ssh` client.

`PrivateSshd` runs the system's /usr/sbin/sshd on a free port of 127.0.0.1 with
its own host key, sshd_config and PAM service, all in a temporary directory.
PAM is redirected with pam_wrapper (LD_PRELOAD): sshd reads its "sshd" PAM
service from our directory instead of /etc/pam.d, so neither the system's sshd
config nor its PAM stack is touched. sshd re-executes itself for every
connection, and pam_wrapper copies the service file when each of those starts,
so `set_pam()` between two logins takes effect on the next one.

`login()` drives the real OpenSSH client under a pseudo-terminal (pexpect) and
answers the prompts a person would see, returning everything the terminal
showed.

The fixtures, for a test module that says `pytest_plugins = ["sshd"]`: `sshd` (one
server per module) and `mfa_sshd` (its PAM stack: pam_unix, then pam_mfa.so talking
to the test's mfad). `running_sshd()` is the same server for a fixture of its own.

PYTEST_DONT_REWRITE: a test module imports PrivateSshd before its pytest_plugins loads
this module as a plugin (as with pgcluster.py); nothing here asserts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pexpect
import pytest

if TYPE_CHECKING:
    from conftest import Daemon

SSHD = Path("/usr/sbin/sshd")
SSH = shutil.which("ssh") or "/usr/bin/ssh"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation dir
PAM_WRAPPER_TMP = Path("/tmp")  # pam_wrapper 1.1 keeps its per-process copies in /tmp/pam.?

PASSWORD_PROMPT = "Password: "
# The client's own prompt for the "password" method (not PAM's): it asks this when sshd
# lists no method it may still try and the client falls back to its own list.
CLIENT_PASSWORD_PROMPT = "'s password: "
CODE_PROMPT = "Verification code: "
# After enrolment at login: the recovery codes come with this prompt, so they reach the screen.
SAVED_PROMPT = "Press Enter once the recovery codes are saved: "
# After a recovery code when few are left: the warning comes with this prompt.
CONTINUE_PROMPT = "Press Enter to continue: "
_PRESS_ENTER = f"(?:{re.escape(SAVED_PROMPT)}|{re.escape(CONTINUE_PROMPT)})"
# dash's PS1 for a user other than root; the throwaway users' shell is /bin/sh
SHELL_PROMPT = "$ "
START_TIMEOUT = 10.0
PROMPT_TIMEOUT = 30.0

Answer = str | Callable[[str], str]
"""What to type at a code prompt: the text, or a function of what the terminal showed."""


def pam_wrapper_library() -> Path:
    """The installed libpam_wrapper.so (Debian's libpam-wrapper package)."""
    for candidate in sorted(Path("/usr/lib").glob("*/libpam_wrapper.so")):
        return candidate
    raise FileNotFoundError("libpam_wrapper.so not found: apt-get install libpam-wrapper")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants(root: int) -> list[int]:
    """Every live process below `root` (sshd's per-connection children call setsid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may hold spaces and parentheses; ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Login:
    """What one `ssh` run showed: the transcript, the prompts answered, how it ended."""

    output: str
    prompts: list[str] = field(default_factory=list)
    exit_status: int | None = None
    stopped: bool = False  # we hung up at a prompt we had no answer for

    def count(self, prompt: str) -> int:
        return self.prompts.count(prompt)


class PrivateSshd:
    """One sshd on 127.0.0.1:<free port>, configured and logging under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.pam_dir = workdir / "pam.d"
        self.config = workdir / "sshd_config"
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.log_path = workdir / "sshd.log"
        self.stderr_path = workdir / "sshd.stderr"
        # Written into every service file so teardown can tell pam_wrapper's copies of
        # our files from those of any other test running on this machine.
        self.marker = f"# pam-mfa e2e sshd {workdir}"
        self.process: subprocess.Popen[bytes] | None = None
        self._made_privsep_dir = False
        self.pam_dir.mkdir(parents=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(self.host_key)],
            check=True,
        )
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {workdir / 'sshd.pid'}\n"
            "UsePAM yes\n"
            "KbdInteractiveAuthentication yes\n"
            "PasswordAuthentication no\n"
            "PubkeyAuthentication no\n"
            "AuthenticationMethods keyboard-interactive\n"
            "StrictModes no\n"
            "LogLevel VERBOSE\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "UseDNS no\n"
        )
        self.set_pam(["auth required pam_unix.so"])

    def set_pam(self, auth_lines: Sequence[str]) -> None:
        """Write the sshd PAM service: `auth_lines`, then account/session/password."""
        lines = [
            self.marker,
            *auth_lines,
            "account required pam_unix.so",
            "session required pam_permit.so",
            "password required pam_deny.so",
        ]
        (self.pam_dir / "sshd").write_text("\n".join(lines) + "\n")
        # libpam falls back to "other" when it cannot use a service; deny, and
        # it silences pam_wrapper's complaint that "other" is missing.
        (self.pam_dir / "other").write_text(
            f"{self.marker}\n"
            + "".join(
                f"{kind} required pam_deny.so\n"
                for kind in ("auth", "account", "session", "password")
            )
        )

    def start(self) -> None:
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep_dir = True
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_PRELOAD": str(pam_wrapper_library()),
            "PAM_WRAPPER": "1",
            "PAM_WRAPPER_SERVICE_DIR": str(self.pam_dir),
        }
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config), "-E", str(self.log_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                if "Server listening on" in self.log_path.read_text(errors="replace"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on port {self.port}:\n{self.logs()}")

    def stop(self) -> None:
        """Kill sshd and every connection process, remove what it left behind."""
        if self.process is not None:
            stragglers = _descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pid in stragglers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process = None
        self._remove_pam_wrapper_copies()
        if self._made_privsep_dir:
            with contextlib.suppress(OSError):
                PRIVSEP_DIR.rmdir()
            self._made_privsep_dir = False

    def _remove_pam_wrapper_copies(self) -> None:
        # sshd's processes end with _exit() or a signal, so pam_wrapper's destructor
        # never removes its /tmp/pam.? copy of our service files; we do, by marker.
        for copy in PAM_WRAPPER_TMP.glob("pam.?"):
            try:
                text = (copy / "sshd").read_text()
            except OSError:
                continue
            if text.startswith(self.marker + "\n"):
                shutil.rmtree(copy, ignore_errors=True)

    def stderr_text(self) -> str:
        """sshd's stderr: pam_wrapper prints the PAM modules' pam_syslog lines here."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        """sshd's own log and its stderr, for assertion messages."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def __enter__(self) -> PrivateSshd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def login(
        self,
        user: str,
        password: str,
        codes: Sequence[Answer] = (),
        command: str = "echo MARKER",
        *,
        interactive: bool = False,
        ssh_options: Sequence[str] = (),
        methods: str = "keyboard-interactive",
        client_defaults: bool = False,
    ) -> Login:
        """Run `ssh user@127.0.0.1 command` as a person would, answering each prompt.

        Every "Password: " prompt gets `password` (the client asks again after a
        failed keyboard-interactive round, up to three times). Each "Verification
        code: " prompt gets the next of `codes`; a callable is called at that
        moment with everything the terminal has shown so far, so a TOTP code is
        computed when it is typed, from what the user can see. With no code
        left, we hang up and the result is `stopped`. The prompt that follows
        the recovery codes after an enrolment gets Enter.

        `interactive=True` asks for a login shell instead of running `command`
        remotely (ssh then allocates a pseudo-terminal, as for a person who just
        types `ssh host`), and types `command; exit` at the shell's first prompt.
        `ssh_options` go to the client before the destination (e.g. `-q`).
        `methods` is the client's PreferredAuthentications (a key: add `-i KEY` too).
        `client_defaults=True` leaves the client its default PreferredAuthentications
        (password among them) instead of keyboard-interactive alone; the client's own
        password prompt is then recorded (CLIENT_PASSWORD_PROMPT) and we hang up there.
        """
        pending = list(codes)
        result = Login(output="")
        destination = [f"{user}@127.0.0.1"] if interactive else [f"{user}@127.0.0.1", command]
        preferred = [] if client_defaults else ["-o", f"PreferredAuthentications={methods}"]
        child = pexpect.spawn(
            SSH,
            [
                "-F",
                "/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                *preferred,
                "-o",
                "ConnectTimeout=10",
                "-p",
                str(self.port),
                *ssh_options,
                *destination,
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            encoding="utf-8",
            codec_errors="replace",
            timeout=PROMPT_TIMEOUT,
        )
        screen = io.StringIO()
        child.logfile_read = screen
        patterns: list[object] = [
            PASSWORD_PROMPT,
            CODE_PROMPT,
            pexpect.EOF,
            _PRESS_ENTER,
            CLIENT_PASSWORD_PROMPT,
        ]
        if interactive:
            patterns.append(re.escape(SHELL_PROMPT))
        try:
            while True:
                which = child.expect(patterns)
                if which == 0:
                    result.prompts.append(PASSWORD_PROMPT)
                    child.sendline(password)
                elif which == 1:
                    if not pending:
                        result.stopped = True
                        break
                    result.prompts.append(CODE_PROMPT)
                    answer = pending.pop(0)
                    child.sendline(answer(_shown(screen)) if callable(answer) else answer)
                elif which == 3:
                    after = child.after
                    shown = after.decode() if isinstance(after, bytes) else str(after)
                    result.prompts.append(shown)
                    child.sendline("")
                elif which == 4:
                    result.prompts.append(CLIENT_PASSWORD_PROMPT)
                    result.stopped = True
                    break
                elif which == 5:
                    patterns.pop()  # the command's own output may hold "$ "; type it once
                    child.sendline(f"{command}; exit")
                else:
                    break
        except pexpect.TIMEOUT as exc:
            raise AssertionError(
                f"ssh waited over {PROMPT_TIMEOUT:g}s; the terminal showed:\n"
                f"{_text(child.before)}\n{self.logs()}"
            ) from exc
        finally:
            child.close(force=True)
            result.output = _shown(screen)
        result.exit_status = None if result.stopped else child.exitstatus
        return result


def _shown(screen: io.StringIO) -> str:
    """The terminal's text so far, with the tty's CR LF line ends as plain newlines."""
    return re.sub(r"\r+\n", "\n", screen.getvalue())


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@contextlib.contextmanager
def private_sshd(workdir: Path) -> Iterator[PrivateSshd]:
    """A started PrivateSshd, always stopped and cleaned up."""
    server = PrivateSshd(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_sshd(root: Path, edit: Callable[[str], str] | None = None) -> Iterator[PrivateSshd]:
    """A started PrivateSshd in `root` (its sshd_config first passed through `edit`),
    stopped on leaving."""
    server = PrivateSshd(root)
    if edit is not None:
        server.config.write_text(edit(server.config.read_text()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def mfa_stack(pam_module: Path, socket_path: Path) -> list[str]:
    """The auth stack of the login tests: the password, then the code."""
    return ["auth required pam_unix.so", f"auth required {pam_module} socket={socket_path}"]


@pytest.fixture(scope="module", name="sshd")
def sshd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSshd]:
    """One private sshd for the test module, stopped after it."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def mfa_sshd(sshd: PrivateSshd, pam_module: Path, mfad: Daemon) -> PrivateSshd:
    """The module's sshd with pam_unix, then pam_mfa.so talking to this test's mfad."""
    sshd.set_pam(mfa_stack(pam_module, mfad.pam_socket))
    return sshd

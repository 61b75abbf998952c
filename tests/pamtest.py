"""Drive the real libpam through pam_wrapper, for tests of pam_mfa.so.

`authenticate()` runs one ``pam_authenticate`` in a child process that has
``libpam_wrapper.so`` preloaded, so the PAM stack is read from a test's own
service directory (`write_service()`) instead of /etc/pam.d. The child is
tests/pamdriver.c, a small PAM application in C with a scripted conversation:
answers given in order (none left: PAM_CONV_ERR), the rhost, ruser and tty
items, PAM_SILENT, a delay before each answer. It is the one way these tests
drive libpam. It has to be C for the runs under valgrind and with preloaded
libraries (the sanitizer runtimes, tests/freecheck.c, tests/mallocfail.c),
where a Python interpreter would drown the report in its own allocations; and
it does all that the other runs need. Answers are passed as arguments, encoded
as file names are, so a test can send bytes that are not UTF-8 (the lone
surrogate U+DCFF in an answer is the byte 0xff).

Module log lines: pam_wrapper hands ``pam_syslog`` to the real libpam, which
writes to /dev/log with facility LOG_AUTHPRIV. These machines have no
/dev/log, so `syslog_sink()` binds one for the duration of a test; without it
the module's lines go to the child's stderr (``PamResult.stderr``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

PAM_WRAPPER = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so"
DRIVER_SOURCE = Path(__file__).with_name("pamdriver.c")
BUILD_DIR = Path(__file__).with_name("build")

# Return codes of Linux-PAM (security/_pam_types.h).
PAM_CODES = {
    0: "PAM_SUCCESS",
    1: "PAM_OPEN_ERR",
    2: "PAM_SYMBOL_ERR",
    3: "PAM_SERVICE_ERR",
    4: "PAM_SYSTEM_ERR",
    5: "PAM_BUF_ERR",
    6: "PAM_PERM_DENIED",
    7: "PAM_AUTH_ERR",
    8: "PAM_CRED_INSUFFICIENT",
    9: "PAM_AUTHINFO_UNAVAIL",
    10: "PAM_USER_UNKNOWN",
    11: "PAM_MAXTRIES",
    12: "PAM_NEW_AUTHTOK_REQD",
    13: "PAM_ACCT_EXPIRED",
    14: "PAM_SESSION_ERR",
    15: "PAM_CRED_UNAVAIL",
    16: "PAM_CRED_EXPIRED",
    17: "PAM_CRED_ERR",
    18: "PAM_NO_MODULE_DATA",
    19: "PAM_CONV_ERR",
    20: "PAM_AUTHTOK_ERR",
    21: "PAM_AUTHTOK_RECOVER_ERR",
    22: "PAM_AUTHTOK_LOCK_BUSY",
    23: "PAM_AUTHTOK_DISABLE_AGING",
    24: "PAM_TRY_AGAIN",
    25: "PAM_IGNORE",
    26: "PAM_ABORT",
    27: "PAM_AUTHTOK_EXPIRED",
    28: "PAM_MODULE_UNKNOWN",
    29: "PAM_BAD_ITEM",
    30: "PAM_CONV_AGAIN",
    31: "PAM_INCOMPLETE",
}


class PamTestError(Exception):
    """The PAM child itself failed (crashed, hung, printed no result)."""


class ValgrindError(PamTestError):
    """valgrind found invalid accesses or definite leaks."""


class SanitizerError(PamTestError):
    """AddressSanitizer or UndefinedBehaviorSanitizer reported an error."""


class SyslogUnavailable(Exception):
    """/dev/log belongs to a running syslog daemon; the sink cannot take it."""


@dataclass
class PamResult:
    code: int  # what pam_authenticate returned
    name: str  # e.g. "PAM_SUCCESS"
    messages: list[tuple[str, str]]  # (style, text): prompt_off|prompt_on|info|error
    elapsed: float  # seconds for the whole child, start to exit
    stderr: str = ""

    def texts(self, style: str | None = None) -> list[str]:
        return [text for s, text in self.messages if style is None or s == style]


def write_service(service_dir: Path, name: str, lines: Sequence[str]) -> None:
    """Write a pam_wrapper service file; modules must be given by absolute path
    unless they are stock Linux-PAM modules. Also writes an ``other`` service
    that denies, so libpam finds its default."""
    service_dir.mkdir(parents=True, exist_ok=True)
    (service_dir / name).write_text("".join(f"{line}\n" for line in lines))
    other = service_dir / "other"
    if not other.exists():
        other.write_text("".join(f"{t} required pam_deny.so\n" for t in _TYPES))


_TYPES = ("auth", "account", "password", "session")


def authenticate(
    service_dir: Path,
    service: str,
    user: str,
    answers: Sequence[str],
    *,
    rhost: str = "",
    tty: str = "",
    ruser: str = "",
    silent: bool = False,
    timeout: float = 60,
    valgrind: bool = False,
    preload_extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    answer_delay: float = 0,
    as_user: str | None = None,
) -> PamResult:
    """Run pam_authenticate(service, user) in a pam_wrapper child and return its result.

    `answers` are given to the prompts in order; a prompt with none left fails
    the conversation (PAM_CONV_ERR), like a user who closes the terminal.
    `valgrind` runs the child under memcheck, `preload_extra` preloads libraries
    (sanitizer runtimes, hooks) before pam_wrapper; either raises if they report.
    `as_user` runs the child as that user (setpriv), as a screen locker runs.
    """
    child_env = dict(os.environ)
    child_env.update(
        LD_PRELOAD=" ".join([*preload_extra, PAM_WRAPPER]),
        PAM_WRAPPER="1",
        PAM_WRAPPER_SERVICE_DIR=str(service_dir),
    )
    if os.path.exists("/dev/log"):
        child_env["PAM_WRAPPER_USE_SYSLOG"] = "1"
    else:
        child_env["PAM_WRAPPER_DEBUGLEVEL"] = "0"  # errors (and module LOG_ERR) to stderr
    if valgrind or preload_extra:
        # pam_wrapper's RTLD_DEEPBIND hides malloc from valgrind and the sanitizers.
        child_env["PAM_WRAPPER_DISABLE_DEEPBIND"] = "1"
    child_env.update(env or {})

    argv = [str(build_driver())]
    for flag, value in (("-r", rhost), ("-u", ruser), ("-t", tty)):
        if value:
            argv += [flag, value]
    if silent:
        argv.append("-s")
    if answer_delay:
        argv += ["-d", str(int(answer_delay * 1000))]
    argv += ["--", service, user, *answers]
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
        argv = ["setpriv", *ids, "--", *argv]
    log_path: Path | None = None
    if valgrind:
        fd, name = tempfile.mkstemp(prefix="pam-mfa-valgrind-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
        argv = [*_valgrind_argv(log_path), *argv]

    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, raw_stderr = proc.communicate(timeout=timeout)
        elapsed = time.monotonic() - started
        stderr = raw_stderr.decode("utf-8", "replace")
        if log_path is not None:
            _check_valgrind(proc.returncode, log_path.read_text(errors="replace"))
        if preload_extra:
            _check_sanitizers(proc.returncode, stderr)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise PamTestError(f"PAM child still running after {timeout} s: {argv}") from exc
    finally:
        if log_path is not None:
            log_path.unlink(missing_ok=True)
        _remove_pam_wrapper_dirs(proc.pid)
    try:
        out = json.loads(stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        raise PamTestError(
            f"PAM child exited {proc.returncode} without a result; stderr:\n{stderr}"
        ) from exc
    code = int(out["code"])
    return PamResult(
        code=code,
        name=PAM_CODES.get(code, f"PAM_{code}"),
        messages=[(str(s), str(t)) for s, t in out["messages"]],
        elapsed=elapsed,
        stderr=stderr,
    )


def _remove_pam_wrapper_dirs(pid: int) -> None:
    """pam_wrapper copies the services into /tmp/pam.X and removes it at exit,
    except when a process exec()s with it loaded (valgrind's launcher does):
    remove what the child left, recognised by the pid pam_wrapper wrote."""
    for pidfile in Path("/tmp").glob("pam.?/pid"):
        with suppress(OSError):
            if pidfile.read_text().strip() == str(pid):
                shutil.rmtree(pidfile.parent, ignore_errors=True)


def build_c(source: Path, *, shared: bool, libs: Sequence[str] = ()) -> Path:
    """Compile a C file of tests/ into tests/build, once per version of the source
    and the command (concurrent callers are safe): an executable
    ``<stem>-<hash>``, or with `shared` a library ``lib<stem>-<hash>.so``; `libs`
    are linker arguments such as "-ldl"."""
    pic = ["-shared", "-fPIC"] if shared else []
    flags = [*pic, "-O1", "-g", "-Wall", "-Wextra", "-Werror"]
    digest = hashlib.sha256(source.read_bytes())
    digest.update("\0".join([*flags, *libs]).encode())
    name = f"{source.stem}-{digest.hexdigest()[:12]}"
    target = BUILD_DIR / (f"lib{name}.so" if shared else name)
    if target.exists():
        return target
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    subprocess.run(["cc", *flags, "-o", str(tmp), str(source), *libs], check=True)
    tmp.replace(target)
    return target


def build_driver() -> Path:
    """Compile tests/pamdriver.c once per source version (concurrent callers are safe)."""
    return build_c(DRIVER_SOURCE, shared=False, libs=["-lpam"])


# ----------------------------------------------------------------- valgrind

# No suppressions file: none is needed. With pam_wrapper's deep binding off (see
# authenticate), libpam, pam_wrapper and glibc give memcheck nothing to report at
# these settings: every valgrind test ends "0 errors from 0 contexts (suppressed:
# 0 from 0)" with no block in use at exit (Debian 12: valgrind 3.19, libpam
# 1.5.2, pam_wrapper 1.1.4, glibc 2.36). So whatever memcheck reports is the
# module's or the driver's. Should an update of those bring noise, add a file
# that suppresses exactly that, one commented entry each, and pass it here.


def _valgrind_argv(log_path: Path) -> list[str]:
    return [
        "valgrind",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
        # libpam unloads the module at pam_end; keep its symbols for the report.
        "--keep-debuginfo=yes",
        "--track-fds=no",
        f"--log-file={log_path}",
    ]


_VG_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors")


def _check_valgrind(returncode: int, log: str) -> None:
    summary = _VG_SUMMARY.findall(log)
    if returncode == 99 or not summary or any(int(n) for n in summary):
        raise ValgrindError(f"valgrind reported errors (exit {returncode}):\n{log}")


def _check_sanitizers(returncode: int, stderr: str) -> None:
    markers = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
    if returncode != 0 or any(m in stderr for m in markers):
        raise SanitizerError(f"sanitizer report (exit {returncode}):\n{stderr}")


# ------------------------------------------------------------------- syslog

_SYSLOG_LINE = re.compile(r"<(\d+)>(?:\w{3} [ \d]\d \d\d:\d\d:\d\d )?(.*)", re.S)
LOG_AUTHPRIV = 10 << 3


@dataclass(frozen=True)
class SyslogRecord:
    facility: int  # e.g. LOG_AUTHPRIV (80)
    severity: int  # e.g. 3 for LOG_ERR
    text: str  # "ident[pid]: message"


@dataclass
class SyslogSink:
    """Messages that reached /dev/log while the sink was bound."""

    records: list[SyslogRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw: bytes) -> None:
        match = _SYSLOG_LINE.match(raw.decode("utf-8", "replace").rstrip("\0\n"))
        if match is None:
            return
        pri = int(match.group(1))
        with self._lock:
            self.records.append(SyslogRecord(pri & ~7, pri & 7, match.group(2)))

    def lines(self, contains: str = "") -> list[SyslogRecord]:
        with self._lock:
            return [r for r in self.records if contains in r.text]

    def wait_for(self, contains: str, timeout: float = 5.0) -> SyslogRecord:
        """The first record containing `contains`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(contains)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no syslog line contains {contains!r}; got {[r.text for r in self.lines()]}"
                )
            time.sleep(0.02)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()


@contextmanager
def syslog_sink(path: str = "/dev/log") -> Iterator[SyslogSink]:
    """Bind a datagram socket at /dev/log (only if nothing serves it) and collect.

    Test processes that want the sink at the same time take turns; a stale
    socket left by a killed run is replaced; a live syslog daemon is left alone
    (SyslogUnavailable). The socket is removed on exit.
    """
    # The lock is on /dev itself: it must be machine-wide and leave no file behind.
    lock = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _bound_sink(path)
    finally:
        os.close(lock)  # releases the lock


def _bound_sink(path: str) -> Iterator[SyslogSink]:
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left behind by a killed run
        else:
            raise SyslogUnavailable(f"{path} is served by a running syslog daemon")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # noqa: S103 - as a real /dev/log: any uid may log (sshd's privsep child)
    inode = os.stat(path).st_ino
    sink = SyslogSink()
    stop = threading.Event()

    def pump() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                sink.add(sock.recv(65536))
            except TimeoutError:
                continue

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join()
        sock.close()
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)

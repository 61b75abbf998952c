"""Drive the real libpam through pam_wrapper, for tests of pam_mfa.so.

`authenticate()` runs one ``pam_authenticate`` in a child process that has
``libpam_wrapper.so`` preloaded, so the PAM stack is read from a test's own
service directory (`write_service()`) instead of /etc/pam.d. The child is one of:

* ``python-pam``: python-pam's own ``PamAuthenticator.authenticate`` (answers
  every echo-off prompt with the one answer); used for single-answer cases;
* ``ctypes``: a small ctypes application with a scripted conversation (several
  answers, rhost/ruser/tty items, PAM_SILENT, a delay before each answer);
* ``c``: tests/pamdriver.c, the same contract in C, for valgrind and the
  sanitizers (a Python interpreter drowns their reports in its own noise).

Module log lines: pam_wrapper hands ``pam_syslog`` to the real libpam, which
writes to /dev/log with facility LOG_AUTHPRIV. These machines have no
/dev/log, so `syslog_sink()` binds one for the duration of a test; without it
the module's lines go to the child's stderr (``PamResult.stderr``).

Run as a script (``python pamtest.py --child SPEC``) it is the Python child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAM_WRAPPER = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so"
DRIVER_SOURCE = Path(__file__).with_name("pamdriver.c")
BUILD_DIR = Path(__file__).with_name("build")
VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"

PAM_SILENT = 0x8000
PAM_RHOST, PAM_RUSER, PAM_TTY = 4, 8, 3
PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PAM_ERROR_MSG, PAM_TEXT_INFO = 1, 2, 3, 4
STYLES = {
    PAM_PROMPT_ECHO_OFF: "prompt_off",
    PAM_PROMPT_ECHO_ON: "prompt_on",
    PAM_ERROR_MSG: "error",
    PAM_TEXT_INFO: "info",
}

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
CODES = {name: code for code, name in PAM_CODES.items()}


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
    driver: str = ""

    def texts(self, style: str | None = None) -> list[str]:
        return [text for s, text in self.messages if style is None or s == style]


def write_service(service_dir: Path, name: str, lines: Sequence[str]) -> None:
    """Write a pam_wrapper service file; modules must be given by absolute path
    unless they are stock Linux-PAM modules. An ``account`` line is added when
    none is given, because python-pam calls pam_acct_mgmt after a success.
    Also writes an ``other`` service that denies, so libpam finds its default."""
    service_dir.mkdir(parents=True, exist_ok=True)
    body = list(lines)
    if not any(line.split()[:1] == ["account"] for line in body):
        body.append("account required pam_permit.so")
    (service_dir / name).write_text("\n".join(body) + "\n")
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
    driver: str | None = None,
) -> PamResult:
    """Run pam_authenticate(service, user) in a pam_wrapper child and return its result.

    `answers` are given to the prompts in order; a prompt with none left fails
    the conversation (PAM_CONV_ERR), like a user who closes the terminal.
    `driver` picks the child (see the module docstring); by default the C
    driver under valgrind or with `preload_extra` (sanitizer runtimes), else
    python-pam when one answer and no PAM items/flags suffice, else ctypes.
    """
    extras = bool(rhost or tty or ruser or silent or answer_delay)
    if driver is None:
        if valgrind or preload_extra:
            driver = "c"
        elif len(answers) == 1 and not extras:
            driver = "python-pam"
        else:
            driver = "ctypes"
    if valgrind and driver != "c":
        raise ValueError("valgrind runs use the C driver")
    if driver == "python-pam" and (extras or len(answers) != 1):
        raise ValueError("python-pam gives one answer and sets no PAM items")

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

    log_path: Path | None = None
    if driver == "c":
        argv = [str(build_driver())]
        for flag, value in (("-r", rhost), ("-u", ruser), ("-t", tty)):
            if value:
                argv += [flag, value]
        if silent:
            argv.append("-s")
        if answer_delay:
            argv += ["-d", str(int(answer_delay * 1000))]
        argv += ["--", service, user, *answers]
        if valgrind:
            fd, name = tempfile.mkstemp(prefix="pam-mfa-valgrind-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
            argv = [*_valgrind_argv(log_path), *argv]
    else:
        spec = {
            "driver": driver,
            "service": service,
            "user": user,
            "answers": list(answers),
            "rhost": rhost,
            "ruser": ruser,
            "tty": tty,
            "flags": PAM_SILENT if silent else 0,
            "delay": answer_delay,
        }
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        argv = [python, str(Path(__file__).resolve()), "--child", json.dumps(spec)]

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
        driver=driver,
    )


def _remove_pam_wrapper_dirs(pid: int) -> None:
    """pam_wrapper copies the services into /tmp/pam.X and removes it at exit,
    except when a process exec()s with it loaded (valgrind's launcher does):
    remove what the child left, recognised by the pid pam_wrapper wrote."""
    for pidfile in Path("/tmp").glob("pam.?/pid"):
        with suppress(OSError):
            if pidfile.read_text().strip() == str(pid):
                shutil.rmtree(pidfile.parent, ignore_errors=True)


def build_driver() -> Path:
    """Compile tests/pamdriver.c once per source version (concurrent callers are safe)."""
    source = DRIVER_SOURCE.read_bytes()
    target = BUILD_DIR / f"pamdriver-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    subprocess.run(
        [
            "cc",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(tmp),
            str(DRIVER_SOURCE),
            "-lpam",
        ],
        check=True,
    )
    tmp.replace(target)
    return target


# ----------------------------------------------------------------- valgrind

VALGRIND_SUPPRESSIONS = Path(__file__).with_name("valgrind.supp")


def _valgrind_argv(log_path: Path) -> list[str]:
    argv = [
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
    if VALGRIND_SUPPRESSIONS.exists():
        argv.append(f"--suppressions={VALGRIND_SUPPRESSIONS}")
    return argv


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


# -------------------------------------------------------------- the child


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    # Resolve pam_* the way a program linked against libpam does: through the
    # global scope, where the preloaded pam_wrapper comes first. (dlsym on a
    # libpam handle would skip pam_wrapper and read /etc/pam.d.)
    ctypes.CDLL(ctypes.util.find_library("pam"), mode=ctypes.RTLD_GLOBAL)
    if spec["driver"] == "python-pam":
        return _child_python_pam(spec)
    return _child_ctypes(spec)


def _child_python_pam(spec: dict[str, Any]) -> dict[str, Any]:
    """python-pam drives the whole call; we only watch its conversation to
    record each message's style, then hand over to python-pam's own."""
    import importlib

    import pam

    internals: Any = importlib.import_module("pam.__internals")
    original = internals.my_conv
    messages: list[list[str]] = []

    def recording_conv(n: int, msgs: Any, resp: Any, *rest: Any) -> int:
        for i in range(n):
            m = msgs[i].contents
            messages.append([STYLES.get(m.msg_style, "unknown"), (m.msg or b"").decode()])
        return int(original(n, msgs, resp, *rest))

    internals.my_conv = recording_conv
    real_find_library = internals.find_library
    internals.find_library = lambda name: None if name == "pam" else real_find_library(name)
    auth = pam.PamAuthenticator()
    auth.authenticate(spec["user"], spec["answers"][0], service=spec["service"], resetcreds=False)
    return {"code": auth.code, "messages": messages}


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_Message)),
    ctypes.POINTER(ctypes.POINTER(_Response)),
    ctypes.c_void_p,
)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


def _child_ctypes(spec: dict[str, Any]) -> dict[str, Any]:
    """A PAM application in ctypes whose conversation answers from a script."""
    libc = ctypes.CDLL(None)
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.free.argtypes = [ctypes.c_void_p]
    libpam = ctypes.CDLL(None)
    handle = ctypes.c_void_p()
    libpam.pam_start.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.POINTER(_Conv),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    libpam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    libpam.pam_authenticate.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libpam.pam_end.argtypes = [ctypes.c_void_p, ctypes.c_int]

    # surrogateescape: a test can send bytes that are not UTF-8 ("\udcff" is 0xff)
    answers = [a.encode("utf-8", "surrogateescape") for a in spec["answers"]]
    messages: list[list[str]] = []

    def converse(n: int, msgs: Any, resp: Any, _data: Any) -> int:
        array = libc.calloc(n, ctypes.sizeof(_Response))
        if not array:
            return 5  # PAM_BUF_ERR
        out = ctypes.cast(array, ctypes.POINTER(_Response))
        for i in range(n):
            m = msgs[i].contents
            messages.append([STYLES.get(m.msg_style, "unknown"), (m.msg or b"").decode()])
            if m.msg_style not in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                continue
            if not answers:
                for j in range(i):
                    libc.free(out[j].resp)
                libc.free(array)
                return 19  # PAM_CONV_ERR: the user walked away
            time.sleep(spec["delay"])
            out[i].resp = libc.strdup(answers.pop(0))
        resp[0] = out
        return 0

    conv = _Conv(_CONV_FUNC(converse), None)
    rc = libpam.pam_start(
        spec["service"].encode(), spec["user"].encode(), ctypes.byref(conv), ctypes.byref(handle)
    )
    for item, key in ((PAM_RHOST, "rhost"), (PAM_RUSER, "ruser"), (PAM_TTY, "tty")):
        if rc == 0 and spec[key]:
            rc = libpam.pam_set_item(handle, item, spec[key].encode())
    if rc == 0:
        rc = libpam.pam_authenticate(handle, spec["flags"])
    if handle:
        libpam.pam_end(handle, rc)
    return {"code": rc, "messages": messages}


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        sys.exit("usage: pamtest.py --child SPEC_JSON")
    sys.stdout.write(json.dumps(_child(json.loads(sys.argv[2]))) + "\n")

"""Benchmarks: pam-mfa against google-authenticator-libpam, and mfad's capacity.

    bash bench/run.sh [--quick] [--only pam|capacity|fleet] [--no-profile] [--daemon-path DIR]

1. Per-authentication cost through the real libpam (bench/pam_bench.c under
   pam_wrapper): pam_permit, pam_google_authenticator.so with and without
   DISALLOW_REUSE + RATE_LIMIT (secrets made by its own CLI), and pam_mfa.so
   with a real mfad, under each of the two name services below. Every user
   authenticates once, so replay protection is exercised, not bypassed.
2. mfad's capacity (bench/mfad_load.c: concurrent C clients on the PAM socket)
   with 10,000 and 100,000 users seeded through mfad's own store code, under
   each name service: logins/s, latency, errors, RSS, CPU and startup time to
   READY=1; and the same load against bench/ceiling.py, a server that speaks
   the protocol and does nothing else, for the asyncio ceiling of this machine.
3. py-spy profiles of mfad under load at 1 and 64 clients (skip: --no-profile).
4. Many hosts, one store: 1, 2 and 4 mfad daemons on one PostgreSQL database
   (a private cluster on this machine), one mfad on SQLite, and GA, each at 64
   concurrent clients, in one run: logins/s and p99, on the PAM sockets
   (mfad_load, clients spread over the daemons) and through libpam (64
   pam_bench processes at once).

mfad resolves every name through NSS before anything else, so its benchmark
users must exist for it, and only for it: every mfad started here runs under
nss_wrapper (LD_PRELOAD, in the daemon's environment only; /etc/passwd is not
touched), in one of two settings (NSS_KINDS):

- "files": NSS_WRAPPER_PASSWD is /etc/passwd plus one line per benchmark user,
  in random order. nss_wrapper's files backend scans it linearly on every
  lookup (as glibc's does), so the lookup costs ~30 ns per line before the
  user's: this setting measures the lookup as much as mfad.
- "indexed": NSS_WRAPPER_PASSWD is /etc/passwd alone and the users come from
  bench/nss_index.c, a module that keeps them sorted (a binary search, a few
  µs), as a fleet's caching name service answers (sssd's memory cache, nscd).

The cost of one lookup in each setting is measured on its own (`nss_probe`).
Every run checks its own outcomes: right codes must succeed, wrong codes must
fail, and every mfad login in the audit log must be of a user NSS resolved
(has a uid); otherwise the report says CHECK FAILED and the exit status is 1.

Everything runs in one temporary directory that is removed at the end, with
every daemon stopped. The report (Markdown) and raw numbers (JSON) go to
bench/out/. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import datetime
import grp
import json
import os
import platform
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Daemon  # noqa: E402  (the test harness's real-daemon helper)
from pamtest import SyslogUnavailable, syslog_sink  # noqa: E402  (and its /dev/log sink)
from pgcluster import private_cluster  # noqa: E402  (and its private PostgreSQL server)

PAM_WRAPPER = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so"
NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"
NSS_KINDS = ("indexed", "files")  # see the docstring; "indexed" first: it is what mfad costs
NSS_LABEL = {"indexed": "indexed NSS", "files": "files NSS"}
UID_BASE = 3_000_000  # benchmark users' uids start here (or above every uid of /etc/passwd)
PAM_SUCCESS, PAM_AUTH_ERR, PAM_MAXTRIES = 0, 7, 11
LEVELS = [1, 16, 64, 256]
CAPACITY_TARGET = 5000.0  # successful verifications/s at 64 clients
P99_TARGET_MS = 20.0
RSS_TARGET_MB = 150.0
READY_TARGET_S = 1.0
# Part 1 asks for one code per pam_authenticate, as GA does, and leaves out the
# configured back-off before answering a wrong code (GA has none).
PAM_DAEMON_CONFIG: dict[str, Any] = {"login": {"max_attempts": 1}, "lockout": {"delay": 0}}
NA = "n/a"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ machine and build


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True)
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "tmp_fs": fs.stdout.splitlines()[-1].split()[1] if fs.returncode == 0 else "?",
        "ga_package": _dpkg_version("libpam-google-authenticator"),
        "git": git.stdout.strip(),
    }


def _os_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _dpkg_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
    )
    return out.stdout.strip() or "not installed"


def build(tmp: Path) -> dict[str, Path]:
    """pam_mfa.so by its own Makefile (as the tests build it); the drivers into tmp."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "pam_module")], check=True)
    bins = {"pam_mfa": ROOT / "pam_module" / "pam_mfa.so"}
    for name, libs in (("pam_bench", ["-lpam", "-lcrypto"]), ("mfad_load", ["-lcrypto"])):
        bins[name] = tmp / name
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
                str(bins[name]),
                str(BENCH / f"{name}.c"),
                *libs,
            ],
            check=True,
        )
    bins["nss_index"] = tmp / "libnss_benchidx.so"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(bins["nss_index"]),
            str(BENCH / "nss_index.c"),
        ],
        check=True,
    )
    if not Path(NSS_WRAPPER).exists():
        raise SystemExit(f"{NSS_WRAPPER} is missing: apt-get install libnss-wrapper")
    return bins


# ------------------------------------------------------------------ users


def write_users(path: Path, users: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name} {secret}\n" for name, secret in users))
    return path


def ga_users(directory: Path, names: list[str], protected: bool) -> list[tuple[str, str]]:
    """One secret file per user, made by google-authenticator's own CLI, non-interactively."""
    directory.mkdir(mode=0o700)
    if protected:  # DISALLOW_REUSE and RATE_LIMIT, as its CLI offers them
        flags = ["-t", "-d", "-r", "3", "-R", "30", "-w", "3"]
    else:  # both off
        flags = ["-t", "-D", "-u", "-w", "3"]

    def make(name: str) -> tuple[str, str]:
        path = directory / name
        subprocess.run(
            ["google-authenticator", *flags, "-f", "-q", "-s", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        return name, path.read_text().splitlines()[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) * 2) as pool:
        return list(pool.map(make, names))


def bench_uids(names: list[str]) -> dict[str, int]:
    """A uid for each benchmark user, above every uid the machine's /etc/passwd has."""
    base = max(UID_BASE, *(entry.pw_uid + 1 for entry in pwd.getpwall()))
    return {name: base + i for i, name in enumerate(names)}


# Runs with the daemon's PYTHONPATH, so that the store is written by the code of the
# mfad that will read it (--daemon-path, compare.py's older trees), in its schema.
# "dsn" in the spec: a PostgreSQL store (part 4, the fleet), else SQLite at "db".
SEED = r"""
import asyncio, base64, dataclasses, json, sys, time
from pathlib import Path
from mfad.secretbox import SecretBox
from mfad.store import SqliteStore
try:
    from mfad.model import PendingEnrolment, TokenParams
except ImportError:  # trees from before mfad/model.py (compare.py's older ones)
    from mfad.store import PendingEnrolment, TokenParams

spec = json.loads(open(sys.argv[1]).read())
with_uid = "uid" in {f.name for f in dataclasses.fields(PendingEnrolment)}

async def write():
    if "dsn" in spec:
        from mfad.pgstore import PostgresStore
        store = await PostgresStore.open(spec["dsn"])
    else:
        store = await SqliteStore.open(Path(spec["db"]))
    box = SecretBox.from_file(Path(spec["key"]))
    now = time.time()

    async def one(name, key, uid):
        sealed = box.seal(name, base64.b32decode(key))
        extra = {"uid": uid} if with_uid else {}
        pending = PendingEnrolment(name, sealed, TokenParams(), now, **extra)
        await store.begin_enrolment(pending)
        await store.activate(pending, step=0, now=now)

    users = spec["users"]
    for i in range(0, len(users), 1000):
        await asyncio.gather(*(one(*user) for user in users[i : i + 1000]))
    await store.close()

asyncio.run(write())
"""


def seed_mfad(daemon: Daemon, uids: dict[str, int]) -> list[tuple[str, str]]:
    """Active tokens with no step used yet, written through mfad's own store and secret box.

    The rows an enrolment over the control socket leaves, owner's uid included
    (a row without one would be bound to its uid on first use: one more write,
    which every benchmark login would pay and a real login pays once). The
    users exist only in the NSS files `nss_env` writes for mfad. Written by
    the mfad on PYTHONPATH (--daemon-path's, or this tree's), in a subprocess.
    """
    return seed_store({"db": str(daemon.db_path)}, daemon.key_path, daemon.tmp, uids)


def seed_store(
    where: dict[str, str], key_path: Path, tmp: Path, uids: dict[str, int]
) -> list[tuple[str, str]]:
    """seed_mfad's rows into the store `where` names ({"db": PATH} or {"dsn": DSN}), sealed
    with the key at `key_path` (made if missing); the users and their base32 secrets."""
    if not key_path.exists():
        subprocess.run(
            [sys.executable, "-m", "mfad", "--generate-key", str(key_path)],
            check=True,
            capture_output=True,
        )
    users = [
        (name, base64.b32encode(secrets.token_bytes(20)).decode(), uid)
        for name, uid in uids.items()
    ]
    spec = tmp / "seed.json"
    spec.write_text(json.dumps({**where, "key": str(key_path), "users": users}))
    subprocess.run([sys.executable, "-c", SEED, str(spec)], check=True)
    spec.unlink()
    return [(name, key) for name, key, _ in users]


def new_daemon(tmp: Path, name: str, env: dict[str, str] | None = None) -> Daemon:
    (tmp / name).mkdir()
    return Daemon(tmp / name, env=env)


# ------------------------------------------------------------------ the daemon's name service


def nss_env(
    directory: Path, uids: dict[str, int], kind: str, bins: dict[str, Path]
) -> dict[str, str]:
    """Files and environment that make a process (mfad, and no other) know `uids`' users.

    nss_wrapper 1.1.12 is on only with both NSS_WRAPPER_PASSWD and
    NSS_WRAPPER_GROUP set, and then never asks glibc's NSS: the machine's own
    users come from a copy of /etc/passwd, its groups from a copy of
    /etc/group. "files": the benchmark users are appended to that copy, in
    random order (so every share of users costs the same mean scan);
    "indexed": they come from bench/nss_index.c's sorted table instead.
    """
    directory.mkdir(mode=0o755)
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = 65534
    lines = [
        f"{name}:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin\n" for name, uid in uids.items()
    ]
    random.Random(len(lines)).shuffle(lines)
    etc = Path("/etc/passwd").read_text()
    etc += "" if etc.endswith("\n") else "\n"
    passwd, group, users = directory / "passwd", directory / "group", directory / "users"
    group.write_text(Path("/etc/group").read_text())
    env = {
        "LD_PRELOAD": " ".join(filter(None, [NSS_WRAPPER, os.environ.get("LD_PRELOAD")])),
        "NSS_WRAPPER_PASSWD": str(passwd),
        "NSS_WRAPPER_GROUP": str(group),
    }
    if kind == "files":
        passwd.write_text(etc + "".join(lines))
    elif kind == "indexed":
        passwd.write_text(etc)
        users.write_text("".join(lines))
        env.update(
            NSS_WRAPPER_MODULE_SO_PATH=str(bins["nss_index"]),
            NSS_WRAPPER_MODULE_FN_PREFIX="benchidx",
            NSS_BENCH_PASSWD=str(users),
        )
    else:
        raise ValueError(kind)
    for path in directory.iterdir():
        path.chmod(0o644)
    return env


# Runs under the daemon's environment: pwd.getpwnam alone (the first, middle and
# last benchmark user of the passwd file, and a random sample), then mfad's own
# identity.resolve (a worker thread per lookup, as a login does) on the loop mfad uses.
PROBE = r"""
import asyncio, json, pwd, random, sys, time
spec = json.loads(sys.argv[1])
uids = spec["uids"]

def check(name):
    entry = pwd.getpwnam(name)
    if entry.pw_uid != uids[name]:
        raise SystemExit(f"{name}: uid {entry.pw_uid}, not {uids[name]}")

def timed(name, n=21):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        check(name)
        times.append(time.perf_counter() - t0)
    times.sort()
    return round(1e6 * times[n // 2], 1)

out = {where: timed(spec[where]) for where in ("first", "middle", "last")}
sample = spec["sample"]
c0, t0 = time.process_time(), time.perf_counter()
for name in sample:
    check(name)
out["sample_us"] = round(1e6 * (time.perf_counter() - t0) / len(sample), 1)
out["sample_cpu_us"] = round(1e6 * (time.process_time() - c0) / len(sample), 1)
try:
    from mfad.identity import resolve
    out["resolve"] = "mfad.identity.resolve"
except ImportError:  # a tree from before names were resolved: the same hop to a thread
    async def resolve(name):
        return await asyncio.to_thread(pwd.getpwnam, name)
    out["resolve"] = "asyncio.to_thread(pwd.getpwnam)"
try:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
except ImportError:
    pass

async def main():
    for name in sample[:20]:
        await resolve(name)
    c0, t0 = time.process_time(), time.perf_counter()
    for name in sample:
        assert await resolve(name) is not None, name
    return (time.perf_counter() - t0) / len(sample), (time.process_time() - c0) / len(sample)

wall, cpu = asyncio.run(main())
out["resolve_us"], out["resolve_cpu_us"] = round(1e6 * wall, 1), round(1e6 * cpu, 1)
try:
    pwd.getpwnam("no-such-user-here")
    raise SystemExit("an unknown name resolved")
except KeyError:
    pass
print(json.dumps(out))
"""


def nss_probe(env: dict[str, str], uids: dict[str, int]) -> dict[str, Any]:
    """What one name lookup costs mfad under `env`; fails if a user does not resolve right."""
    in_file = [line.split(":", 1)[0] for line in _passwd_lines(env)]
    order = [name for name in in_file if name in uids]  # "indexed": the module's table
    if len(order) != len(uids):
        raise RuntimeError(f"NSS files hold {len(order)} of {len(uids)} benchmark users")
    sample = random.Random(1).sample(order, min(500, len(order)))
    spec: dict[str, Any] = {
        "first": order[0],
        "middle": order[len(order) // 2],
        "last": order[-1],
        "sample": sample,
    }
    spec["uids"] = {n: uids[n] for n in {*sample, spec["first"], spec["middle"], spec["last"]}}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(spec)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"NSS under the daemon's environment is wrong:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    result["lines"] = len(in_file)
    return result


def _passwd_lines(env: dict[str, str]) -> list[str]:
    """The benchmark's passwd lines as NSS sees them: the files, then the module's table."""
    paths = [env["NSS_WRAPPER_PASSWD"], env.get("NSS_BENCH_PASSWD")]
    return [line for path in paths if path for line in Path(path).read_text().splitlines()]


def audit_logins(daemon: Daemon, offset: int = 0) -> dict[str, int]:
    """The daemon's `login` records from byte `offset` on, by outcome and reason.

    `unresolved` counts those without a uid: a name NSS did not know, which
    fails whatever the code (a right-code row would show it; a wrong-code row
    would not, hence this count).
    """
    counts: collections.Counter[str] = collections.Counter()
    with daemon.audit_path.open("rb") as f:
        f.seek(offset)
        for line in f:
            if b'"login"' not in line:
                continue
            record = json.loads(line)
            if record.get("event") != "login":
                continue
            counts[f"{record.get('outcome')}/{record.get('reason')}"] += 1
            if "uid" not in record:
                counts["unresolved"] += 1
    return dict(counts)


def audit_size(daemon: Daemon) -> int:
    return daemon.audit_path.stat().st_size if daemon.audit_path.exists() else 0


# ------------------------------------------------------------------ process helpers


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM in MB and CPU seconds (user+system) of a process."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def daemon_pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """Whatever happens inside, the daemon is stopped (or killed) on the way out."""
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        else:
            daemon.kill()


def cpu_busy(interval: float = 2.0) -> float:
    """Fraction of all cores busy over `interval` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) until other work leaves the cores alone; returns the busy share.

    Other test suites on a shared machine can triple every number here.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        log(f"machine {100 * busy:.0f} % busy with other work; waiting for it to calm down")
        time.sleep(8)
        busy = cpu_busy()
    return busy


class OtherWork:
    """How much CPU other processes took while a part ran: the contamination of its numbers.

    Machine-wide busy time from /proc/stat minus this process's and its reaped
    children's (every driver and daemon here is reaped by the end of a part).
    """

    def __enter__(self) -> OtherWork:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        wall, busy, mine = (e - s for e, s in zip(end, self.start, strict=True))
        self.others_pct = round(100 * max(busy - mine, 0.0) / (wall * (os.cpu_count() or 1)), 1)

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def speed_probe() -> float:
    """Milliseconds for a fixed piece of pure-Python work (best of 5).

    On this VM the same code has run at half speed for minutes at a time with
    nothing else running in the guest (a noisy neighbour on the host): the
    probe, taken around each part, shows when that happened.
    """
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        sum(i * i for i in range(300_000))
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def sleep_to_next_step() -> None:
    time.sleep(30 - time.time() % 30 + 0.05)


# ------------------------------------------------------------------ 1. through libpam


def pam_env(service_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=PAM_WRAPPER,
        PAM_WRAPPER="1",
        PAM_WRAPPER_SERVICE_DIR=str(service_dir),
        PAM_WRAPPER_USE_SYSLOG="1",
    )
    return env


@contextlib.contextmanager
def syslog_reader() -> Iterator[None]:
    """Someone reading /dev/log, as journald or rsyslogd would be.

    GA logs every authentication with syslog(3). With nothing on /dev/log,
    glibc writes the line to /dev/console instead (LOG_CONS), which on this VM
    is a serial console: about 1.4 ms a line, more than GA's own work. The test
    harness's sink is used; it takes turns with the tests through a lock on
    /dev, so it is held one run at a time (seconds), never for the whole bench.
    """
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(SyslogUnavailable):  # a real syslog daemon: even better
            stack.enter_context(syslog_sink())
        yield


def pam_run(
    bins: dict[str, Path],
    service_dir: Path,
    service: str,
    users: Path,
    raw: Path,
    *,
    first: int,
    count: int,
    warmup: int,
    wrong: bool,
    expect: int,
) -> dict[str, Any]:
    argv = [
        str(bins["pam_bench"]),
        "-s",
        service,
        "-f",
        str(users),
        "-o",
        str(first),
        "-n",
        str(count),
        "-w",
        str(warmup),
        "-e",
        str(expect),
        "-r",
        str(raw),
    ]
    if wrong:
        argv.append("-x")
    with syslog_reader():
        out = subprocess.run(
            argv, env=pam_env(service_dir), capture_output=True, text=True, check=True, timeout=900
        )
    result: dict[str, Any] = json.loads(out.stdout)
    result["latencies_ns"] = [int(x) for x in raw.read_text().split()]
    return result


def summarise(latencies_ns: list[int]) -> dict[str, float]:
    """Mean and nearest-rank percentiles in µs, as the C drivers compute them."""
    xs = sorted(latencies_ns)

    def pct(p: float) -> float:
        return xs[round(p * (len(xs) - 1))] / 1000

    return {
        "mean_us": sum(xs) / len(xs) / 1000,
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "max_us": xs[-1] / 1000,
    }


def mfa_service(kind: str) -> str:
    """The PAM service (and stack key) of pam_mfa with the mfad of NSS setting `kind`."""
    return "mfa" if kind == "indexed" else f"mfa_{kind}"


def write_service(service_dir: Path, name: str, line: str) -> None:
    service_dir.mkdir(exist_ok=True)
    (service_dir / name).write_text(f"auth required {line}\naccount required pam_permit.so\n")
    other = service_dir / "other"
    if not other.exists():  # libpam's fallback; without it every pam_start logs an error
        other.write_text(
            "".join(
                f"{t} required pam_deny.so\n" for t in ("auth", "account", "password", "session")
            )
        )


def bench_pam(
    tmp: Path, bins: dict[str, Path], count: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """Every stack, right and wrong codes, `count` each over disjoint users.

    The work is cut into `rounds` rounds, each running every stack in turn, so
    that a burst of other work on the machine lands on all stacks alike. mfad
    runs twice, one daemon per name service (NSS_KINDS), with the same users.
    """
    chunk = count // rounds
    per_run = rounds * (warmup + chunk)
    names = [f"bu{i:06d}" for i in range(2 * per_run)]  # right codes, then wrong codes
    uids = bench_uids(names)
    svc = tmp / "pam.d"

    log(f"google-authenticator CLI: {2 * len(names)} secret files (two sets)")
    t0 = time.monotonic()
    ga = {
        "ga_protected": write_users(
            tmp / "ga_protected.users", ga_users(tmp / "ga_protected", names, protected=True)
        ),
        "ga_open": write_users(
            tmp / "ga_open.users", ga_users(tmp / "ga_open", names, protected=False)
        ),
    }
    log(f"  made in {time.monotonic() - t0:.1f}s")
    for name in ga:
        write_service(
            svc, name, f"pam_google_authenticator.so secret={tmp / name}/${{USER}} user=root"
        )
    write_service(svc, "permit", "pam_permit.so")

    daemons: dict[str, Daemon] = {}
    mfa_users: dict[str, Path] = {}
    nss: dict[str, dict[str, Any]] = {}
    for kind in NSS_KINDS:
        service = mfa_service(kind)
        env = nss_env(tmp / f"nss-pam-{kind}", uids, kind, bins)
        nss[kind] = nss_probe(env, uids)
        log(
            f"NSS ({kind}, {nss[kind]['lines']:,} lines): getpwnam {nss[kind]['sample_us']} µs "
            f"mean, resolve() {nss[kind]['resolve_us']} µs"
        )
        daemons[service] = daemon = new_daemon(tmp, f"mfad-pam-{kind}", env)
        log(f"mfad ({kind} NSS): seeding {len(names)} users")
        mfa_users[service] = write_users(tmp / f"{service}.users", seed_mfad(daemon, uids))
        write_service(svc, service, f"{bins['pam_mfa']} socket={daemon.pam_socket}")

    stacks = [
        ("permit", "pam_permit (floor)", mfa_users["mfa"], PAM_AUTH_ERR),
        ("ga_open", "GA, reuse allowed, no rate limit", ga["ga_open"], PAM_AUTH_ERR),
        ("ga_protected", "GA, DISALLOW_REUSE + RATE_LIMIT 3/30s", ga["ga_protected"], PAM_AUTH_ERR),
        *(
            (
                mfa_service(kind),
                f"pam_mfa + mfad, {NSS_LABEL[kind]}",
                mfa_users[mfa_service(kind)],
                PAM_MAXTRIES,
            )
            for kind in NSS_KINDS
        ),
    ]
    runs = [
        (stack, wrong)
        for stack in stacks
        for wrong in (False, True)
        if not (stack[0] == "permit" and wrong)
    ]  # pam_permit asks nothing
    acc: dict[tuple[str, bool], dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        pids = {}
        for service, daemon in daemons.items():
            stack.enter_context(running(daemon))
            daemon.start(**PAM_DAEMON_CONFIG)
            pids[service] = daemon_pid(daemon)
        for r in range(rounds):
            log(f"pam: round {r + 1}/{rounds}, {chunk} logins per stack and code")
            for (service, label, users, wrong_expect), wrong in runs:
                pid = pids.get(service)
                cpu0 = proc_status(pid)["cpu_s"] if pid else 0.0
                expect = wrong_expect if wrong else PAM_SUCCESS
                one = pam_run(
                    bins,
                    svc,
                    service,
                    users,
                    tmp / "latencies",
                    first=(per_run if wrong else 0) + r * (warmup + chunk),
                    count=chunk,
                    warmup=warmup,
                    wrong=wrong,
                    expect=expect,
                )
                if one["errors"] == one["count"]:  # nothing as expected: the set-up is broken
                    tail = daemons[service].stderr()[-3000:] if service in daemons else ""
                    raise RuntimeError(
                        f"{label}, {'wrong' if wrong else 'right'} codes: none of "
                        f"{one['count']} gave PAM code {expect}: {one['codes']}"
                        f"\n{tail}"
                    )
                row = acc.setdefault(
                    (service, wrong),
                    {
                        "stack": service,
                        "label": label,
                        "wrong": wrong,
                        "count": 0,
                        "errors": 0,
                        "elapsed_s": 0.0,
                        "codes": collections.Counter(),
                        "latencies_ns": [],
                        "mfad_cpu_s": 0.0,
                    },
                )
                row["count"] += one["count"]
                row["errors"] += one["errors"]
                row["elapsed_s"] += one["elapsed_s"]
                row["codes"].update(one["codes"])
                row["latencies_ns"] += one["latencies_ns"]
                if pid:  # warm-up logins included: a slight overestimate
                    row["mfad_cpu_s"] += proc_status(pid)["cpu_s"] - cpu0
    rows = []
    for row in acc.values():
        row.update(summarise(row.pop("latencies_ns")))
        row["auths_per_s"] = row["count"] / row["elapsed_s"]
        row["codes"] = dict(row["codes"])
        if row["stack"] in daemons:
            row["mfad_cpu_us_per_auth"] = round(
                1e6 * row["mfad_cpu_s"] / (row["count"] + rounds * warmup)
            )
        rows.append(row)
    audit = {service: audit_logins(daemon) for service, daemon in daemons.items()}
    return {
        "rows": rows,
        "count": count,
        "warmup": warmup,
        "rounds": rounds,
        "mfad_audit_logins": audit,
        "expected_logins": per_run,
        "nss": nss,
        "mfad_config": PAM_DAEMON_CONFIG,
    }


# ------------------------------------------------------------------ 2. capacity


def run_load(
    bins: dict[str, Path],
    socket_path: Path,
    pid: int,
    users: Path,
    levels: list[int],
    *,
    seconds: float,
    max_logins: int,
    first: int = 0,
) -> list[dict[str, Any]]:
    """mfad_load over several client counts; the server's RSS/CPU sampled as each level ends."""
    argv = [
        str(bins["mfad_load"]),
        "-S",
        str(socket_path),
        "-f",
        str(users),
        "-o",
        str(first),
        "-c",
        ",".join(map(str, levels)),
        "-d",
        str(seconds),
        "-n",
        str(max_logins),
    ]
    results: list[dict[str, Any]] = []
    before, t_before = proc_status(pid), time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            level = json.loads(line)
            after, t_after = proc_status(pid), time.monotonic()
            level["server_rss_mb"] = round(after["VmRSS"], 1)
            level["server_hwm_mb"] = round(after["VmHWM"], 1)
            # CPU over wall time of the level (one core = 100 %)
            cpu = after["cpu_s"] - before["cpu_s"]
            level["server_cpu_pct"] = round(100 * cpu / (t_after - t_before), 1)
            # CPU per login hardly moves when other work shares the cores; logins/s does
            level["server_cpu_us_per_login"] = round(1e6 * cpu / max(level["logins"], 1))
            before, t_before = after, t_after
            results.append(level)
            log(
                f"  {level['clients']:>3} clients: {level['ok_per_s']:,.0f}/s ok, "
                f"p50 {ms(level['p50_us'])} ms, p99 {ms(level['p99_us'])} ms, "
                f"failed {level['logins'] - level['ok']}, CPU {level['server_cpu_pct']} % "
                f"({level['server_cpu_us_per_login']} µs/login), "
                f"RSS {level['server_rss_mb']} MB"
            )
    if proc.returncode != 0:
        raise RuntimeError(f"mfad_load failed with {proc.returncode}")
    return results


def bench_capacity(
    tmp: Path, bins: dict[str, Path], populations: list[int], seconds: float, profile_seconds: float
) -> dict[str, Any]:
    """Each population seeded once, then loaded under each NSS setting in turn.

    The second setting's pass waits for the next time step, so that the same
    users can log in again (each once per step, as in the first pass).
    """
    out: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    for population in populations:
        daemon = new_daemon(tmp, f"mfad-{population}")
        log(f"capacity: seeding {population:,} users through mfad's store")
        t0 = time.monotonic()
        uids = bench_uids([f"cu{i:07d}" for i in range(population)])
        users = write_users(tmp / f"cap-{population}.users", seed_mfad(daemon, uids))
        seed_s = time.monotonic() - t0
        db_mb = sum(p.stat().st_size for p in daemon.db_path.parent.iterdir()) / 2**20
        for n, kind in enumerate(NSS_KINDS):
            daemon.env = nss_env(tmp / f"nss-{population}-{kind}", uids, kind, bins)
            probe = nss_probe(daemon.env, uids)
            log(
                f"  NSS ({kind}, {probe['lines']:,} lines): getpwnam {probe['sample_us']} µs "
                f"mean, {probe['last']} µs for the last line, resolve() {probe['resolve_us']} µs"
            )
            if n > 0:
                log("  waiting for the next time step (the same users log in again)")
                sleep_to_next_step()
            audit0 = audit_size(daemon)
            with running(daemon):
                ready, idle = [], []
                for _ in range(3):
                    t0 = time.monotonic()
                    daemon.start()
                    ready.append(time.monotonic() - t0)
                    time.sleep(0.2)
                    idle.append(proc_status(daemon_pid(daemon))["VmRSS"])
                    daemon.stop()
                daemon.start()
                pid = daemon_pid(daemon)
                log(
                    f"  {kind} NSS: READY in {min(ready):.3f}..{max(ready):.3f} s, "
                    f"idle RSS {max(idle):.1f} MB"
                )
                # Each level gets its own share of the users, so no user logs in twice
                # within one time step even across levels.
                share = population // len(LEVELS)
                levels = run_load(
                    bins, daemon.pam_socket, pid, users, LEVELS, seconds=seconds, max_logins=share
                )
                if sum(level["ok"] for level in levels) == 0:
                    raise RuntimeError(
                        f"no mfad login succeeded ({kind} NSS):\n{daemon.stderr()[-3000:]}"
                    )
                used = sum(level["logins"] for level in levels)
                succeeded = sum(level["ok"] for level in levels)
                if population == max(populations) and profile_seconds > 0 and kind == "indexed":
                    profiles = profile_daemon(
                        tmp, bins, daemon, users, population, used, profile_seconds
                    )
                    succeeded += sum(p["load"]["ok"] for p in profiles if "load" in p)
                final = proc_status(pid)
            out.append(
                {
                    "users": population,
                    "nss": kind,
                    "nss_probe": probe,
                    "seed_s": round(seed_s, 1),
                    "store_mb": round(db_mb, 1),
                    "ready_s": [round(r, 3) for r in ready],
                    "idle_rss_mb": round(max(idle), 1),
                    "peak_rss_mb": round(final["VmHWM"], 1),
                    "levels": levels,
                    "audit_logins": audit_logins(daemon, audit0),
                    "succeeded": succeeded,
                }
            )
    return {"populations": out, "profiles": profiles}


def bench_ceiling(tmp: Path, bins: dict[str, Path], seconds: float) -> list[dict[str, Any]]:
    """The same load against a server that speaks the protocol and does nothing else."""
    users = write_users(
        tmp / "ceiling.users",
        [(f"xu{i:06d}", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ") for i in range(150000)],
    )
    kinds = [
        ("asyncio streams (mfad's shape)", "streams", False),
        ("asyncio Protocol callbacks", "protocol", False),
    ]
    has_uvloop = (
        subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True).returncode == 0
    )
    if has_uvloop:
        kinds += [("uvloop streams", "streams", True), ("uvloop Protocol", "protocol", True)]
    out: list[dict[str, Any]] = []
    for label, kind, uv in kinds:
        path = tmp / "ceiling.sock"
        env = {**os.environ, "BENCH_UVLOOP": "1" if uv else "0"}
        with subprocess.Popen(
            [sys.executable, str(BENCH / "ceiling.py"), str(path), kind],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        ) as server:
            try:
                assert server.stdout is not None
                server.stdout.readline()
                log(f"ceiling: {label}")
                level = run_load(
                    bins, path, server.pid, users, [64], seconds=seconds, max_logins=150000
                )[0]
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=10)
        level["label"] = label
        out.append(level)
    if not has_uvloop:
        out.append({"label": "uvloop", "skipped": "uvloop not importable in this Python"})
    return out


# ------------------------------------------------------------------ 3. profile


def profile_daemon(
    tmp: Path,
    bins: dict[str, Path],
    daemon: Daemon,
    users: Path,
    population: int,
    used: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """py-spy samples the running mfad (all threads) under load at 64 and at 1 client."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        return [{"skipped": f"{py_spy} not installed (.venv/bin/pip install py-spy)"}]
    out: list[dict[str, Any]] = []
    for clients in (64, 1):
        need = 20000 if clients == 64 else 5000
        if used + need > population:
            log("  profile: all users have logged in this time step; waiting for the next")
            sleep_to_next_step()
            used = 0
        raw = tmp / f"profile-{clients}.txt"
        log(f"profile: py-spy on mfad, {clients} client(s), {seconds:g} s")
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(daemon_pid(daemon)),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--rate",
                "250",
                "--threads",
                "--nonblocking",
                "--duration",
                str(int(seconds) + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # let py-spy attach before the load starts
        load = run_load(
            bins,
            daemon.pam_socket,
            daemon_pid(daemon),
            users,
            [clients],
            seconds=seconds,
            max_logins=need,
            first=used,
        )[0]
        used += load["logins"]
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            out.append({"clients": clients, "skipped": f"py-spy failed: {err.strip()[-300:]}"})
            continue
        out.append({"clients": clients, "load": load, **summarise_profile(raw.read_text())})
    return out


WAITING = {"EpollSelector.select (selectors.py)", "_worker (thread.py)"}
# uvloop's loop is C: py-spy sees a thread inside it as the Python frame that
# entered it, whether libuv is waiting in epoll or reading and writing sockets.
C_LOOP = {"Runner.run (runners.py)", "run (uvloop/__init__.py)"}


def summarise_profile(collapsed: str, top: int = 30) -> dict[str, Any]:
    """Where mfad's threads spend their time, from py-spy's raw (collapsed) output.

    py-spy leaves out samples of threads it sees blocked, but still counts the
    event loop inside epoll and an executor thread waiting for work (in C,
    holding no GIL): those are reported as `waiting_pct`. Samples inside
    uvloop's C loop (waiting and libuv's socket work alike) are `c_loop_pct`.
    Both are left out of the tables, whose shares are of the remaining busy
    samples. `inclusive` lists the daemon's own functions (mfad/*) only.
    """
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = waiting = c_loop = 0
    for line in collapsed.splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        frames = stack.split(";")
        funcs = [_short(f) for f in frames[1:]] or ["<unknown>"]
        total += n
        if funcs[-1] in WAITING:
            waiting += n
            continue
        if funcs[-1] in C_LOOP:
            c_loop += n
            continue
        threads[_thread_name(frames[0])] += n
        self_count[funcs[-1]] += n
        for func in set(funcs):
            if "(mfad/" in func:
                incl_count[func] += n
    busy = total - waiting - c_loop
    shares = {
        "samples": total,
        "waiting_pct": round(100 * waiting / max(total, 1), 1),
        "c_loop_pct": round(100 * c_loop / max(total, 1), 1),
    }
    if busy == 0:
        return {**shares, "threads": [], "self": [], "inclusive": []}

    def table(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / busy, 1)) for name, n in counter.most_common(top)]

    return {
        **shares,
        "threads": table(threads),
        "self": table(self_count),
        "inclusive": table(incl_count),
    }


def _thread_name(frame: str) -> str:
    """py-spy's thread frame, 'thread (1234): "mfad-store_0"' -> 'mfad-store_0'."""
    name = frame.split(": ", 1)[-1]
    return name.strip('"')


def _short(frame: str) -> str:
    """'func (path/to/mod.py:123)' -> 'func (mod.py)'; 'mfad/' kept for the daemon's own."""
    name, _, where = frame.partition(" (")
    parts = Path(where.rstrip(")").rsplit(":", 1)[0]).parts
    if not parts:
        return name
    short = "/".join(parts[-2:]) if parts[-2:-1] == ("mfad",) else parts[-1]
    return f"{name} ({short})"


# ------------------------------------------------------------------ 4. fleet


FLEET_CLIENTS = 64
FLEET_SIZES = [1, 2, 4]
FLEET_WARMUP = 512  # logins before each measurement, off the record: pools fill, caches warm


def fleet_config(dsn: str, host: str) -> dict[str, Any]:
    """Overrides for one host of the fleet: the shared database, its own name in records."""
    return {"store": {"backend": "postgresql", "dsn": dsn}, "audit": {"host": host}}


def fleet_load(
    bins: dict[str, Path],
    sockets: list[Path],
    pids: list[int],
    db_pids: Callable[[], list[int]],
    users: Path,
    *,
    first: int,
    count: int,
    seconds: float,
) -> dict[str, Any]:
    """mfad_load's 64 clients spread over `sockets`; the daemons' and the database's CPU."""
    argv = [
        str(bins["mfad_load"]),
        "-S",
        ",".join(map(str, sockets)),
        "-f",
        str(users),
        "-o",
        str(first),
        "-u",
        str(count),
        "-n",
        str(count),
        "-c",
        str(FLEET_CLIENTS),
        "-d",
        str(seconds),
    ]
    with CpuUse(pids, db_pids) as cpu:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    level: dict[str, Any] = json.loads(out.stdout)
    return {
        "driver": "socket",
        "logins": level["logins"],
        "ok": level["ok"],
        "failed": level["logins"] - level["ok"],
        "ok_per_s": level["ok_per_s"],
        "p50_us": level["p50_us"],
        "p99_us": level["p99_us"],
        "max_us": level["max_us"],
        "errors": level["errors"],
        "paused_s": level["paused_s"],
        **cpu.figures(level["logins"]),
    }


def pam_parallel(
    bins: dict[str, Path],
    service_dir: Path,
    services: list[str],
    users: Path,
    raw_dir: Path,
    *,
    first: int,
    per_client: int,
    pids: list[int],
    db_pids: Callable[[], list[int]],
) -> dict[str, Any]:
    """64 pam_bench processes at once, client i on services[i mod N], each its own users.

    Throughput is every authentication over the wall time from the first launch
    to the last exit (64 process start-ups included, as sshd forks for each
    login); percentiles are over every raw latency (pam_start to pam_end).
    """
    raw_dir.mkdir()
    procs: list[subprocess.Popen[str]] = []
    with syslog_reader(), CpuUse(pids, db_pids) as cpu:
        try:
            t0 = time.monotonic()
            for i in range(FLEET_CLIENTS):
                argv = [
                    str(bins["pam_bench"]),
                    "-s",
                    services[i % len(services)],
                    "-f",
                    str(users),
                    "-o",
                    str(first + i * per_client),
                    "-n",
                    str(per_client),
                    "-w",
                    "0",
                    "-r",
                    str(raw_dir / str(i)),
                    "-C",  # not pam_wrapper: it has too few runtime directories for 64
                    str(service_dir),
                ]
                procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
            outs = [json.loads(proc.communicate(timeout=900)[0]) for proc in procs]
            wall = time.monotonic() - t0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    if any(proc.returncode != 0 for proc in procs):
        raise RuntimeError(f"pam_bench failed: {[proc.returncode for proc in procs]}")
    latencies = [int(x) for path in raw_dir.iterdir() for x in path.read_text().split()]
    codes: collections.Counter[str] = collections.Counter()
    for one in outs:
        codes.update(one["codes"])
    count = sum(one["count"] for one in outs)
    ok = codes.get("Success", 0)
    stats = summarise(latencies)
    return {
        "driver": "libpam",
        "logins": count,
        "ok": ok,
        "failed": count - ok,
        "codes": dict(codes),
        "ok_per_s": ok / wall,
        "wall_s": round(wall, 3),
        "p50_us": stats["p50_us"],
        "p99_us": stats["p99_us"],
        "max_us": stats["max_us"],
        **cpu.figures(count),
    }


class CpuUse:
    """CPU seconds the daemons `pids` and the database's processes used inside the block."""

    def __init__(self, pids: list[int], db_pids: Callable[[], list[int]]) -> None:
        self.pids, self.db_pids = pids, db_pids

    def _sample(self) -> tuple[float, dict[int, float]]:
        db = {}
        for pid in self.db_pids():
            with contextlib.suppress(OSError):  # a backend that just ended
                db[pid] = proc_status(pid)["cpu_s"]
        return sum(proc_status(pid)["cpu_s"] for pid in self.pids), db

    def __enter__(self) -> CpuUse:
        self.t0 = time.monotonic()
        self.mfad0, self.db0 = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        mfad1, db1 = self._sample()
        self.mfad_s = mfad1 - self.mfad0
        # a backend started inside the block counts from zero
        self.db_s = sum(cpu - self.db0.get(pid, 0.0) for pid, cpu in db1.items())

    def figures(self, logins: int) -> dict[str, Any]:
        n = max(logins, 1)
        return {
            "mfad_cpu_pct": round(100 * self.mfad_s / self.wall, 1),
            "db_cpu_pct": round(100 * self.db_s / self.wall, 1),
            "mfad_cpu_us_per_login": round(1e6 * self.mfad_s / n),
            "db_cpu_us_per_login": round(1e6 * self.db_s / n),
        }


def bench_fleet(
    tmp: Path, bins: dict[str, Path], share: int, per_client: int, seconds: float
) -> dict[str, Any]:
    """1, 2 and 4 mfad daemons on one PostgreSQL database, one SQLite mfad, and GA.

    Every mfad configuration gets 64 clients twice (fleet_measure): mfad_load on
    the PAM sockets, then 64 pam_bench processes through the real libpam and
    pam_mfa.so. GA (DISALLOW_REUSE + RATE_LIMIT) gets the libpam run only. Every
    user logs in once, so replay protection is exercised. The daemons of a fleet
    share the key file and the database and differ in sockets, audit log and
    audit.host, as hosts do; the PostgreSQL server is a private cluster
    (tests/pgcluster.py) on this machine, stopped and removed at the end.
    """
    pam_users = FLEET_CLIENTS * per_client
    block = FLEET_WARMUP + share + pam_users  # users one configuration uses
    pg_names = [f"fu{i:06d}" for i in range(len(FLEET_SIZES) * block)]
    sq_names = [f"su{i:06d}" for i in range(block)]
    uids = bench_uids(pg_names + sq_names)
    env = nss_env(tmp / "nss-fleet", uids, "indexed", bins)
    svc = tmp / "pam.d-fleet"
    out: dict[str, Any] = {"share": share, "per_client": per_client, "seconds": seconds}

    log(f"fleet: google-authenticator CLI, {pam_users} secret files")
    ga = write_users(
        tmp / "fleet-ga.users",
        ga_users(tmp / "fleet-ga", [f"gu{i:06d}" for i in range(pam_users)], protected=True),
    )
    write_service(
        svc, "ga", f"pam_google_authenticator.so secret={tmp / 'fleet-ga'}/${{USER}} user=root"
    )
    rows: list[dict[str, Any]] = []
    stderr: dict[str, list[str]] = {}

    with private_cluster() as cluster:
        dsn = cluster.create_database()
        hosts = [new_daemon(tmp, f"fleet-host{k}", env) for k in range(max(FLEET_SIZES))]
        log(f"fleet: seeding {len(pg_names):,} users into PostgreSQL through mfad's store")
        t0 = time.monotonic()
        pg_users = write_users(
            tmp / "fleet-pg.users",
            seed_store({"dsn": dsn}, hosts[0].key_path, tmp, {n: uids[n] for n in pg_names}),
        )
        out["seed_s"] = round(time.monotonic() - t0, 1)
        log(f"  seeded in {out['seed_s']} s")
        # what autovacuum would long since have done on a fleet's database; otherwise it
        # runs during the first configuration's measurement, and only then
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        for host in hosts[1:]:  # the fleet's one key, as an administrator copies it
            host.key_path.parent.mkdir(mode=0o700)
            shutil.copy2(hosts[0].key_path, host.key_path)
        for k, host in enumerate(hosts):
            write_service(svc, f"fleet{k}", f"{bins['pam_mfa']} socket={host.pam_socket}")

        def db_pids() -> list[int]:
            return cluster._processes()  # the postmaster and its backends

        for i, n in enumerate(FLEET_SIZES):
            label = f"PostgreSQL, {n} mfad"
            xacts0 = transactions(dsn)
            with contextlib.ExitStack() as stack:
                for k, host in enumerate(hosts[:n]):
                    stack.enter_context(running(host))
                    host.start(**fleet_config(dsn, f"host{k}"))
                phase = fleet_measure(
                    bins, svc, hosts[:n], [f"fleet{k}" for k in range(n)], pg_users, label,
                    first=i * block, share=share, per_client=per_client, seconds=seconds,
                    db_pids=db_pids,
                )  # fmt: skip
            time.sleep(0.5)  # the daemons' backends have ended, and so flushed their counts
            logins = sum(r["logins"] for r in phase) + FLEET_WARMUP
            for row in phase:
                row["db_xacts_per_login"] = round((transactions(dsn) - xacts0) / logins, 1)
                rows.append({"store": "postgresql", "daemons": n, **row})
        for k, host in enumerate(hosts):
            stderr[f"host{k}"] = odd_lines(host.stderr())

    log(f"fleet: SQLite, 1 mfad: seeding {len(sq_names):,} users")
    single = new_daemon(tmp, "fleet-sqlite", env)
    sq_users = write_users(
        tmp / "fleet-sqlite.users", seed_mfad(single, {n: uids[n] for n in sq_names})
    )
    write_service(svc, "fleet_sqlite", f"{bins['pam_mfa']} socket={single.pam_socket}")
    with running(single):
        single.start()
        phase = fleet_measure(
            bins, svc, [single], ["fleet_sqlite"], sq_users, "SQLite, 1 mfad",
            first=0, share=share, per_client=per_client, seconds=seconds, db_pids=no_database,
        )  # fmt: skip
    rows += [{"store": "sqlite", "daemons": 1, **row} for row in phase]
    stderr["sqlite"] = odd_lines(single.stderr())

    log("fleet: GA (DISALLOW_REUSE + RATE_LIMIT), 64 pam_bench processes")
    pam = pam_parallel(
        bins, svc, ["ga"], ga, tmp / "raw-ga", first=0, per_client=per_client, pids=[],
        db_pids=no_database,
    )  # fmt: skip
    rows.append({"store": "files", "daemons": 0, "label": "GA, DISALLOW_REUSE + RATE_LIMIT", **pam})
    log(fleet_line(rows[-1]))
    return {**out, "rows": rows, "daemon_stderr": stderr}


def fleet_measure(
    bins: dict[str, Path],
    svc: Path,
    daemons: list[Daemon],
    services: list[str],
    users: Path,
    label: str,
    *,
    first: int,
    share: int,
    per_client: int,
    seconds: float,
    db_pids: Callable[[], list[int]],
) -> list[dict[str, Any]]:
    """Running `daemons`, from user `first` on: a warm-up (the store's connections
    opened, off the record), mfad_load (`share` users, up to `seconds`), then the
    libpam run (`per_client` users each); and what their audit logs say."""
    pids = [daemon_pid(d) for d in daemons]
    sockets = [d.pam_socket for d in daemons]
    audit0 = [audit_size(d) for d in daemons]
    warm = fleet_load(
        bins, sockets, pids, db_pids, users, first=first, count=FLEET_WARMUP, seconds=1.0
    )
    log(f"fleet: {label}: mfad_load, 64 clients over {len(sockets)} socket(s)")
    load = fleet_load(
        bins, sockets, pids, db_pids, users, first=first + FLEET_WARMUP, count=share,
        seconds=seconds,
    )  # fmt: skip
    log(f"fleet: {label}: 64 pam_bench processes through libpam")
    pam = pam_parallel(
        bins, svc, services, users, svc.parent / f"raw-{services[0]}-{len(services)}",
        first=first + FLEET_WARMUP + share, per_client=per_client, pids=pids, db_pids=db_pids,
    )  # fmt: skip
    audit: collections.Counter[str] = collections.Counter()
    for d, offset in zip(daemons, audit0, strict=True):
        audit.update(audit_logins(d, offset))
    expected = warm["ok"] + load["ok"] + pam["ok"]
    rows = [{"label": label, **row} for row in (load, pam)]
    for row in rows:
        row.update(audit_logins=dict(audit), audit_expected=expected)
        log(fleet_line(row))
    return rows


def transactions(dsn: str) -> int:
    """Transactions the database has counted so far (committed and rolled back)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def no_database() -> list[int]:
    return []


def fleet_line(row: dict[str, Any]) -> str:
    return (
        f"  {row['label']}, {row['driver']}: {row['ok_per_s']:,.0f}/s ok, "
        f"p50 {ms(row['p50_us'])} ms, p99 {ms(row['p99_us'])} ms, failed {row['failed']}, "
        f"mfad CPU {row['mfad_cpu_pct']} %, PostgreSQL CPU {row['db_cpu_pct']} %"
    )


def odd_lines(text: str, keep: int = 20) -> list[str]:
    """A daemon's stderr lines that say something went wrong (the last `keep`)."""
    words = ("error", "traceback", "warning", "exception", "timeout", "refus")
    return [
        line
        for line in text.splitlines()
        if any(w in line.lower() for w in words)
        # the harness stops listening on NOTIFY_SOCKET once the daemon is READY
        and '"notify_failed"' not in line
    ][-keep:]


# ------------------------------------------------------------------ report


def ms(us: float | None) -> str:
    return NA if us is None else f"{us / 1000:.2f}"


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Run {m['date']}, git {m['git']}: `{results['command']}`",
        "",
        f"Machine: {m['nproc']} x {m['cpu']}, {m['mem_gb']} GB RAM, {m['os']}, kernel "
        f"{m['kernel']}, Python {m['python']}, {m['tmp_fs']} under {tempfile.gettempdir()}; "
        f"libpam-google-authenticator {m['ga_package']}. Cores busy with other work just "
        f"before the run {100 * results['busy_start']:.0f} %, just after "
        f"{100 * results['busy_end']:.0f} %; load average (1 min) {results['load_start']:.2f} "
        f"at start, {results['load_end']:.2f} at end.",
        "",
    ]
    if results.get("daemon_path"):
        lines += [f"mfad from **{results['daemon_path']}** (not this tree's daemon/).", ""]
    failed = results.get("check_failures", [])
    if failed:
        lines += [
            "**CHECK FAILED**: this run did not measure what it says:",
            "",
            *[f"- {f}" for f in failed],
            "",
        ]
    else:
        lines += [
            "Checks passed: every right code succeeded and every wrong code failed as "
            "expected, and every mfad login in the audit logs was of a user NSS "
            "resolved (the record has a uid).",
            "",
        ]
    lines += nss_table(results)
    if "pam" in results:
        lines += pam_table(results["pam"])
    if "capacity" in results:
        lines += capacity_tables(results["capacity"], results.get("ceiling", []))
    for prof in results.get("capacity", {}).get("profiles", []):
        lines += profile_table(prof)
    if "fleet" in results:
        lines += fleet_table(results["fleet"])
    if results.get("targets"):
        lines += ["### Targets", "", *[f"- {t}" for t in results["targets"]], ""]
    return "\n".join(lines)


def nss_table(results: dict[str, Any]) -> list[str]:
    """One name lookup under each daemon environment, measured on its own (`nss_probe`)."""
    probes = [
        ("part 1", kind, probe) for kind, probe in results.get("pam", {}).get("nss", {}).items()
    ]
    probes += [
        (f"{pop['users']:,} users", pop["nss"], pop["nss_probe"])
        for pop in results.get("capacity", {}).get("populations", [])
    ]
    if not probes:
        return []
    lines = [
        "### NSS: one name lookup in mfad's environment (nss_wrapper), measured apart",
        "",
        "getpwnam of the first, middle and last benchmark user in the passwd file's order "
        "(median of 21), the mean over 500 random users (wall and CPU), and mfad's "
        "`identity.resolve` (the lookup in a worker thread, awaited on uvloop as a login does).",
        "",
        "| users | NSS | passwd lines | first µs | middle µs | last µs | random mean µs "
        "| random CPU µs | resolve() µs | resolve() CPU µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for where, kind, p in probes:
        lines.append(
            f"| {where} | {kind} | {p['lines']:,} | {p['first']} | {p['middle']} "
            f"| {p['last']} | {p['sample_us']} | {p['sample_cpu_us']} "
            f"| {p['resolve_us']} | {p['resolve_cpu_us']} |"
        )
    return [*lines, ""]


def checks(results: dict[str, Any]) -> list[str]:
    """Everything that says the run did not measure real logins; empty when all is well."""
    bad: list[str] = []
    pam = results.get("pam")
    if pam:
        for r in pam["rows"]:
            if r["errors"]:
                bad.append(
                    f"{r['label']}, {'wrong' if r['wrong'] else 'right'} codes: "
                    f"{r['errors']} of {r['count']} not as expected ({r['codes']})"
                )
        n = pam["expected_logins"]
        for service, got in pam["mfad_audit_logins"].items():
            want = {"success/correct_code": n, "failure/too_many_attempts": n}
            if got != want:
                bad.append(f"{service}: audit has logins {got}, expected {want}")
    for pop in results.get("capacity", {}).get("populations", []):
        where = f"{pop['users']:,} users, {pop['nss']} NSS"
        for lv in pop["levels"]:
            if lv["ok"] != lv["logins"]:
                bad.append(
                    f"{where}, {lv['clients']} clients: {lv['logins'] - lv['ok']} of "
                    f"{lv['logins']} logins failed"
                )
        got = pop["audit_logins"]
        if got.get("unresolved") or got.get("success/correct_code") != pop["succeeded"]:
            bad.append(
                f"{where}: audit has logins {got}, expected "
                f"{pop['succeeded']} successes, all resolved"
            )
    rows = results.get("fleet", {}).get("rows", [])
    for r in rows:
        if r["failed"]:
            bad.append(f"fleet, {r['label']}, {r['driver']}: {r['failed']} of {r['logins']} failed")
    for r in rows:
        got, ok = r.get("audit_logins", {}), r.get("audit_expected")
        if ok is not None and (got.get("unresolved") or got.get("success/correct_code") != ok):
            bad.append(f"fleet, {r['label']}: audit has logins {got}, expected {ok} successes")
    return bad


def speed(part: dict[str, Any]) -> str:
    before, after = part.get("speed_probe_ms", [None, None])
    return f"speed probe {before} ms before, {after} ms after (lower is faster)"


def pam_table(pam: dict[str, Any]) -> list[str]:
    lines = [
        f"### 1. One authentication through libpam ({pam['count']:,} per row in "
        f"{pam['rounds']} interleaved rounds, each after {pam['warmup']} warm-up; each user once)",
        "",
        f"mfad config overrides: `{json.dumps(pam['mfad_config'])}`. Other processes used "
        f"{pam['other_work_pct']} % of the machine's CPU while this part ran; "
        f"{speed(pam)}.",
        "",
        "| stack | code | auths/s | mean µs | p50 µs | p99 µs | PAM result | mean / GA protected "
        "| mean / GA open | mfad CPU µs/auth |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    by = {(r["stack"], r["wrong"]): r for r in pam["rows"]}
    for r in pam["rows"]:
        prot, open_ = by.get(("ga_protected", r["wrong"])), by.get(("ga_open", r["wrong"]))
        ratio_p = f"{r['mean_us'] / prot['mean_us']:.2f}" if prot else NA
        ratio_o = f"{r['mean_us'] / open_['mean_us']:.2f}" if open_ else NA
        outcome = ", ".join(f"{k} {v:,}" for k, v in r["codes"].items())
        if r["errors"]:
            outcome += f" (**{r['errors']} unexpected**)"
        lines.append(
            f"| {r['label']} | {'wrong' if r['wrong'] else 'right'} | {r['auths_per_s']:,.0f} "
            f"| {r['mean_us']:,.0f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {outcome} "
            f"| {ratio_p} | {ratio_o} | {r.get('mfad_cpu_us_per_auth', '')} |"
        )
    return [*lines, ""]


def capacity_tables(cap: dict[str, Any], ceiling: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### 2. mfad capacity: C clients on the PAM socket, right codes, each user once",
        "",
        f"Default config. Other processes used {cap['other_work_pct']} % of the machine's CPU "
        f"while this part ran; {speed(cap)}.",
        "",
        "| users | NSS | clients | logins | ok/s | p50 ms | p99 ms | max ms | failed | mfad CPU % "
        "| mfad CPU µs/login | mfad RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pop in cap["populations"]:
        for lv in pop["levels"]:
            lines.append(
                f"| {pop['users']:,} | {pop['nss']} | {lv['clients']} | {lv['logins']:,} "
                f"| {lv['ok_per_s']:,.0f} | {ms(lv['p50_us'])} | {ms(lv['p99_us'])} "
                f"| {ms(lv['max_us'])} | {lv['logins'] - lv['ok']} | {lv['server_cpu_pct']} "
                f"| {lv['server_cpu_us_per_login']} | {lv['server_rss_mb']} |"
            )
    lines += [
        "",
        "| users | NSS | seeding s | store MB | spawn to READY=1 s (3 starts) | idle RSS MB "
        "| peak RSS MB |",
        "|---:|---|---:|---:|---|---:|---:|",
    ]
    for pop in cap["populations"]:
        lines.append(
            f"| {pop['users']:,} | {pop['nss']} | {pop['seed_s']} | {pop['store_mb']} "
            f"| {', '.join(f'{r:.3f}' for r in pop['ready_s'])} | {pop['idle_rss_mb']} "
            f"| {pop['peak_rss_mb']} |"
        )
    if ceiling:
        lines += [
            "",
            "Ceiling: the same 64-client load against bench/ceiling.py (speaks the protocol, "
            "does no work):",
            "",
            "| server | ok/s | p50 ms | p99 ms | server CPU % | server CPU µs/login |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in ceiling:
            if "skipped" in c:
                lines.append(f"| {c['label']} | {c['skipped']} | | | | |")
            else:
                lines.append(
                    f"| {c['label']} | {c['ok_per_s']:,.0f} | {ms(c['p50_us'])} "
                    f"| {ms(c['p99_us'])} | {c['server_cpu_pct']} "
                    f"| {c['server_cpu_us_per_login']} |"
                )
    return [*lines, ""]


def profile_table(prof: dict[str, Any]) -> list[str]:
    if "skipped" in prof:
        return [f"Profile skipped: {prof['skipped']}", ""]
    load = prof["load"]
    lines = [
        f"### 3. py-spy profile of mfad, {prof['clients']} client(s): {load['ok_per_s']:,.0f} "
        f"logins/s, mfad CPU {load['server_cpu_pct']} % while sampling",
        "",
        f"{prof['samples']:,} samples at 250 Hz: {prof['waiting_pct']} % waiting (asyncio loop "
        f"in epoll, executor threads idle), {prof.get('c_loop_pct', 0)} % inside uvloop's C loop "
        "(epoll and libuv's socket work, which py-spy cannot tell apart); shares below are of "
        "the busy rest. Busy samples per thread: "
        + ", ".join(f"{name} {share} %" for name, share in prof["threads"]),
        "",
        "| self % | function (any) | | inclusive % | function (mfad's own) |",
        "|---:|---|---|---:|---|",
    ]
    for (sn, sv), (iname, iv) in zip(prof["self"], prof["inclusive"], strict=False):
        lines.append(f"| {sv} | `{sn}` | | {iv} | `{iname}` |")
    return [*lines, ""]


def fleet_table(fleet: dict[str, Any]) -> list[str]:
    rows = fleet["rows"]
    sqlite = {r["driver"]: r for r in rows if r["store"] == "sqlite"}
    ga = next((r for r in rows if r["store"] == "files"), None)
    lines = [
        f"### 4. Many hosts, one store: {FLEET_CLIENTS} clients, right codes, each user once",
        "",
        f"One PostgreSQL (private cluster, fsync off) and every mfad on this machine's "
        f"{os.cpu_count()} cores; default config. socket: mfad_load's clients spread "
        f"over the daemons' PAM sockets ({fleet['share']:,} users, up to {fleet['seconds']:g} s). "
        f"libpam: {FLEET_CLIENTS} pam_bench processes at once, {fleet['per_client']} users "
        f"each, pam_start to pam_end through pam_mfa.so (spread over the daemons) or GA. "
        f"Each mfad row follows {FLEET_WARMUP} warm-up logins (off the record). PostgreSQL "
        f"xacts/login: the database's transactions over the whole configuration (both rows, "
        f"warm-up included) per login. Seeding PostgreSQL through mfad's store took "
        f"{fleet.get('seed_s', NA)} s. Other processes "
        f"used {fleet['other_work_pct']} % of the machine's CPU while this part ran; "
        f"{speed(fleet)}. CPU % is of one core.",
        "",
        "| store | via | logins | ok/s | p50 ms | p99 ms | failed | mfad CPU % "
        "| PostgreSQL CPU % | mfad µs/login | PostgreSQL µs/login | PostgreSQL xacts/login "
        "| ok/s ÷ SQLite | p99 ÷ SQLite | ok/s ÷ GA | p99 ÷ GA |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(a: float, b: dict[str, Any] | None, key: str) -> str:
        return f"{a / b[key]:.2f}" if b and b[key] else NA

    for r in rows:
        base = sqlite.get(r["driver"])
        versus_ga = ga if r["driver"] == "libpam" else None
        lines.append(
            f"| {r['label']} | {r['driver']} | {r['logins']:,} | {r['ok_per_s']:,.0f} "
            f"| {ms(r['p50_us'])} | {ms(r['p99_us'])} | {r['failed']} | {r['mfad_cpu_pct']} "
            f"| {r['db_cpu_pct']} | {r['mfad_cpu_us_per_login']} | {r['db_cpu_us_per_login']} "
            f"| {r.get('db_xacts_per_login', NA)} "
            f"| {ratio(r['ok_per_s'], base, 'ok_per_s')} | {ratio(r['p99_us'], base, 'p99_us')} "
            f"| {ratio(r['ok_per_s'], versus_ga, 'ok_per_s')} "
            f"| {ratio(r['p99_us'], versus_ga, 'p99_us')} |"
        )
    odd = {name: got for name, got in fleet["daemon_stderr"].items() if got}
    if odd:
        lines += ["", "Daemon stderr lines that mention an error or warning:", ""]
        lines += [f"- {name}: `{line}`" for name, got in odd.items() for line in got]
    return [*lines, ""]


def targets(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "pam" in results:
        by = {(r["stack"], r["wrong"]): r for r in results["pam"]["rows"]}
        mfa, prot, open_ = by[("mfa", False)], by[("ga_protected", False)], by[("ga_open", False)]
        half = prot["mean_us"] / 2
        out.append(
            f"pam_mfa right code ({NSS_LABEL['indexed']}), mean {mfa['mean_us']:,.0f} µs "
            f"≤ half of protected GA's ({half:,.0f} µs): {verdict(mfa['mean_us'] <= half)}"
        )
        files = by.get((mfa_service("files"), False))
        if files:
            out.append(
                f"the same with {NSS_LABEL['files']}: mean {files['mean_us']:,.0f} µs: "
                f"{verdict(files['mean_us'] <= half)}"
            )
        out.append(
            f"stretch, ≤ unprotected GA's {open_['mean_us']:,.0f} µs: "
            f"{verdict(mfa['mean_us'] <= open_['mean_us'])}"
        )
        mw, gw, gow = by[("mfa", True)], by[("ga_protected", True)], by[("ga_open", True)]
        out.append(
            f"pam_mfa wrong code, mean {mw['mean_us']:,.0f} µs ≤ GA's "
            f"({gw['mean_us']:,.0f} µs protected, {gow['mean_us']:,.0f} µs open): "
            f"{verdict(mw['mean_us'] <= min(gw['mean_us'], gow['mean_us']))}"
        )
    for pop in results.get("capacity", {}).get("populations", []):
        for lv in pop["levels"]:
            if lv["clients"] == 64:
                p99 = lv["p99_us"] / 1000
                ok = lv["ok_per_s"] >= CAPACITY_TARGET and p99 <= P99_TARGET_MS
                out.append(
                    f"{pop['users']:,} users ({pop['nss']} NSS), 64 clients: "
                    f"{lv['ok_per_s']:,.0f}/s "
                    f"(≥ {CAPACITY_TARGET:,.0f}), p99 {p99:.1f} ms (≤ {P99_TARGET_MS:g}): "
                    f"{verdict(ok)}"
                )
        peak = max(pop["peak_rss_mb"], pop["idle_rss_mb"])
        out.append(
            f"{pop['users']:,} users ({pop['nss']} NSS): peak RSS {peak} MB "
            f"(≤ {RSS_TARGET_MB:g}): "
            f"{verdict(peak <= RSS_TARGET_MB)}; READY in at most "
            f"{max(pop['ready_s']):.3f} s (< {READY_TARGET_S:g}): "
            f"{verdict(max(pop['ready_s']) < READY_TARGET_S)}"
        )
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, about 5 minutes")
    parser.add_argument("--only", choices=("pam", "capacity", "fleet"), help="run one part")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        metavar="SECONDS",
        help="wait up to this long for the machine to be idle first "
        "(default: %(default)s; 0: start at once)",
    )
    parser.add_argument(
        "--daemon-path",
        type=Path,
        metavar="DIR",
        help="run the mfad package found in DIR (e.g. a patched copy) instead "
        "of this tree's; DIR goes first on the daemon's PYTHONPATH",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "run as root: mfad's PAM socket must be root's, and GA runs with user=root",
            file=sys.stderr,
        )
        return 2
    if args.daemon_path:
        if not (args.daemon_path / "mfad" / "__init__.py").exists():
            print(f"{args.daemon_path}/mfad is not a package", file=sys.stderr)
            return 2
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(args.daemon_path.resolve()), os.environ.get("PYTHONPATH")])
        )

    count, warmup, rounds = (600, 10, 2) if args.quick else (4000, 10, 4)
    populations = [2000, 20000] if args.quick else [10000, 100000]
    seconds = 2.0 if args.quick else 6.0
    fleet_share, fleet_per_client = (4000, 30) if args.quick else (10000, 80)
    profile_seconds = 0.0 if args.no_profile else (3.0 if args.quick else 6.0)

    busy = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else cpu_busy()
    results: dict[str, Any] = {
        "machine": machine(),
        "load_start": os.getloadavg()[0],
        "busy_start": busy,
        "command": " ".join(["bash bench/run.sh", *(sys.argv[1:] if argv is None else argv)]),
        "daemon_path": str(args.daemon_path) if args.daemon_path else None,
    }
    tmp = Path(tempfile.mkdtemp(prefix="pam-mfa-bench-"))
    tmp.chmod(0o755)  # the daemon's directories must be reachable like the tests' ones
    try:
        bins = build(tmp)
        if args.only in (None, "pam"):
            probe = speed_probe()
            with OtherWork() as other:
                results["pam"] = bench_pam(tmp, bins, count, warmup, rounds)
            results["pam"].update(
                other_work_pct=other.others_pct, speed_probe_ms=[probe, speed_probe()]
            )
        if args.only in (None, "capacity"):
            probe = speed_probe()
            with OtherWork() as other:
                results["capacity"] = bench_capacity(
                    tmp, bins, populations, seconds, profile_seconds
                )
                results["ceiling"] = bench_ceiling(tmp, bins, seconds)
            results["capacity"].update(
                other_work_pct=other.others_pct, speed_probe_ms=[probe, speed_probe()]
            )
        if args.only in (None, "fleet"):
            probe = speed_probe()
            with OtherWork() as other:
                results["fleet"] = bench_fleet(tmp, bins, fleet_share, fleet_per_client, seconds)
            results["fleet"].update(
                other_work_pct=other.others_pct, speed_probe_ms=[probe, speed_probe()]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_end"] = os.getloadavg()[0]
    results["busy_end"] = cpu_busy()
    results["targets"] = targets(results)
    results["check_failures"] = checks(results)
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"results-{stamp}.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    (OUT / f"report-{stamp}.md").write_text(text + "\n")
    print(text)
    log(f"written to {OUT}/report-{stamp}.md and results-{stamp}.json")
    if results["check_failures"]:
        log("CHECK FAILED: " + "; ".join(results["check_failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

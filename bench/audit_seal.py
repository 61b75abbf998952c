"""The cost of forward-secure sealing per audit record and per login (issue 16).

    .venv/bin/python bench/audit_seal.py            # about a minute, as root
    .venv/bin/python bench/audit_seal.py --quick

1. The write path alone: AuditLog.record of a login's canonical record (the
   fields a real `login` record has), into a temporary log, sealing off and on,
   in interleaved rounds, as CPU time of the process (a shared machine sways
   wall time more than the cost). Sealing adds an HMAC-SHA256 of the line and
   a string splice; a record crossing an epoch end adds the seal record and an HMAC
   (the key file is replaced in a thread, not counted here).
2. Whole logins: a real mfad (tests/conftest.py's Daemon) answering serial logins
   of a PAM service that needs no code (one `login` record each) over the PAM
   socket, sealing off and on. This is the cost a login sees end to end.

Printed: microseconds per record (median of rounds) and logins per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mfa_wire.events import Event, Outcome  # noqa: E402
from mfad import seal  # noqa: E402
from mfad.audit import AuditLog  # noqa: E402

FIELDS = {
    "session": "3f9a2c1e-1a",
    "peer": "pid=4242,uid=0",
    "user": "alice",
    "service": "sshd",
    "rhost": "203.0.113.7",
    "ruser": "",
    "tty": "ssh",
    "uid": 1001,
    "outcome": Outcome.SUCCESS,
    "reason": "correct_code",
    "duration_ms": 812.4,
    "method": "totp",
    "attempts": 1,
}


async def _records(directory: Path, sealed: bool, n: int) -> float:
    """Seconds per record for `n` records."""
    key = directory / "seal.key"
    log = AuditLog(directory / "audit.jsonl", to_stderr=False, seal_key=key)
    await log.open()
    if sealed and log.sealing is None:
        await log.seal_init(900)
    began = time.process_time()  # this process's CPU: less swayed by a busy machine
    for _ in range(n):
        await log.record(Event.LOGIN, **FIELDS)
    took = time.process_time() - began
    await log.close()
    return took / n


def mac_only(n: int) -> float:
    """Microseconds for the MAC of one typical login record's line, alone."""
    line = json.dumps({"seq": 1, "time": "2026-11-30T13:05:18.797907Z", **FIELDS, "epoch": 0})
    key = bytes(32)
    began = time.process_time()
    for _ in range(n):
        seal.with_mac(line, key)
    return (time.process_time() - began) / n * 1e6


def write_path(rounds: int, n: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name in ("off", "on"):
            directory = Path(tempfile.mkdtemp(prefix="bench-seal-"))
            try:
                results[name].append(asyncio.run(_records(directory, name == "on", n)))
            finally:
                shutil.rmtree(directory)
    return {name: statistics.median(v) * 1e6 for name, v in results.items()}


def epoch_end_cost(n: int) -> float:
    """Microseconds for ending an epoch in memory: one seal record and one key evolution."""

    async def run(directory: Path) -> float:
        now = [1_999_999_980.0]
        log = AuditLog(
            directory / "audit.jsonl",
            to_stderr=False,
            seal_key=directory / "seal.key",
            clock=lambda: now[0],
        )
        await log.open()
        await log.seal_init(1)
        began = time.perf_counter()
        for _ in range(n):
            now[0] += 1.0
            await log.record(Event.LOGIN, **FIELDS)
        took = time.perf_counter() - began
        await log.close()
        return took / n

    directory = Path(tempfile.mkdtemp(prefix="bench-seal-"))
    try:
        return asyncio.run(run(directory)) * 1e6
    finally:
        shutil.rmtree(directory)


def login_rate(n: int, rounds: int) -> dict[str, float]:
    from conftest import running_daemon
    from wire import PamWire

    rates: dict[str, list[float]] = {"off": [], "on": []}
    with running_daemon() as daemon:
        daemon.base["services"] = {"cron": "off"}
        for _ in range(rounds):
            for name in ("off", "on"):
                daemon.stop()
                daemon.seal_key_path.unlink(missing_ok=True)
                daemon.start()
                if name == "on":
                    assert daemon.request("audit_seal_init", force=True)["ok"]
                for _ in range(100):  # warm-up, not counted
                    with PamWire(daemon.pam_socket) as wire:
                        wire.login("root", [], service="cron")
                began = time.perf_counter()
                for _ in range(n):
                    with PamWire(daemon.pam_socket) as wire:
                        wire.login("root", [], service="cron")
                rates[name].append(n / (time.perf_counter() - began))
    return {name: statistics.median(v) for name, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    records, rounds, logins = (5_000, 3, 500) if args.quick else (20_000, 5, 2_000)
    path = write_path(rounds, records)
    print(f"the MAC of one login record's line: {mac_only(100_000):.1f} us (CPU)")
    print(f"audit write path, {records} login records x {rounds} rounds (median CPU time):")
    print(f"  sealing off  {path['off']:6.1f} us/record")
    print(f"  sealing on   {path['on']:6.1f} us/record  (+{path['on'] - path['off']:.1f} us)")
    print(
        f"  an epoch end {epoch_end_cost(2_000):6.1f} us wall (a seal record, a key evolution; "
        "the key file is replaced in a thread meanwhile)"
    )
    rate = login_rate(logins, rounds)
    print(f"serial logins through a real mfad, {logins} per round (median):")
    for name in ("off", "on"):
        print(f"  sealing {name:<3}  {rate[name]:7.0f} logins/s  ({1e6 / rate[name]:.0f} us/login)")
    print(f"  sealing costs {1e6 / rate['on'] - 1e6 / rate['off']:+.0f} us per login")


if __name__ == "__main__":
    main()

"""A sealed trail survives SIGKILL at any instant: it verifies, and mfad continues it.

Real time, one-second epochs, so kills land while records are written, while an
epoch is being sealed and while the key file is being replaced.
"""

from __future__ import annotations

import json
import random
import threading
import time

from click.testing import CliRunner
from conftest import SEEN, Daemon
from wire import PamWire

from mfa_cli.main import cli

KILLS = 12
SEED = 16


def _storm(mfad: Daemon, stop: threading.Event, answered: list[int]) -> None:
    """Logins by a service that needs no code, as fast as mfad answers; kills break some."""
    while not stop.is_set():
        try:
            with PamWire(mfad.pam_socket, timeout=5) as wire:
                if wire.login("root", [], service="cron")[-1].payload == "K":
                    answered[0] += 1
        except OSError:
            time.sleep(0.01)  # mfad is down or restarting
        except Exception:  # a frame cut by the kill
            time.sleep(0.01)


def test_kill_9_at_any_instant_leaves_a_sealed_trail_that_verifies_and_goes_on(
    mfad: Daemon,
) -> None:
    """SIGKILL at random moments of a login storm, twelve times, restarting each time: every
    record written before a kill is still there after the restart (a torn last line moved
    into an `audit_repaired` record), and the whole trail verifies with the key, epoch by
    epoch, across every restart."""
    rng = random.Random(SEED)
    mfad.base["services"] = {"cron": "off"}
    mfad.base["audit"]["seal_epoch"] = 1
    mfad.restart()
    init = CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), "audit", "seal-init"])
    assert init.exit_code == 0, init.output
    vk = next(w for w in init.output.split() if w.startswith("mfadvk1-"))
    SEEN["secret"].add(vk)  # never to appear in a log (test_zz_no_secrets_in_logs)
    stop, answered = threading.Event(), [0]
    storm = threading.Thread(target=_storm, args=(mfad, stop, answered))
    storm.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 1.5))
            mfad.kill()
            before = [ln for ln in mfad.audit_path.read_bytes().split(b"\n") if ln]
            whole = before if before[-1].endswith(b"}") else before[:-1]
            mfad.start()
            after = mfad.audit_path.read_bytes().split(b"\n")
            assert after[: len(whole)] == whole, "a record written before the kill was lost"
    finally:
        stop.set()
        storm.join(30)
    time.sleep(1.1)  # one more epoch end, sealed by the running mfad
    result = CliRunner().invoke(
        cli,
        ["--socket", str(mfad.control_socket), "audit", "verify", "--key-file", "-", "--json"],
        input=vk,
    )
    verdict = json.loads(result.stdout)
    print(f"\n{answered[0]} logins answered, {verdict['records']} records, {verdict['sealing']}")
    assert result.exit_code == 0, verdict["first_bad"]
    assert verdict["checked"] == "chain+seal"
    assert verdict["sealing"]["last_sealed_epoch"] >= 5
    assert answered[0] > KILLS
    assert "Traceback" not in mfad.stderr()

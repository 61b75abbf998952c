"""An unprivileged user flooding the control socket cannot fill the disk or stop logins.

On 5e2ee70 every refused request was one audit record: four clients wrote about
2,400 records a second and filled 4 MiB in ten seconds, after which every login
was refused (audit.required). Now each uid that is not an administrator has a
request budget, and like refusals are written as one record with a count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from conftest import Daemon, totp_now
from diskfull import small_tmpfs
from wire import PamWire

FLOOD_SECONDS = float(os.environ.get("MFA_FLOOD_SECONDS", "60"))
FLOODERS = 4

# A client that sends refused requests as fast as it can until its deadline, then prints
# how many answers of each kind it got.
_FLOOD = """
import collections, json, socket, sys, time
from mfa_wire.framing import encode, recv_frame_blocking
path, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
request = encode("Q", json.dumps({"op": "status", "user": "root"}))
seen = collections.Counter()
while time.monotonic() < until:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(request)
        seen[json.loads(recv_frame_blocking(sock).payload).get("error")] += 1
print(json.dumps(seen))
"""


def test_a_flood_of_refused_requests_leaves_logins_working_and_the_log_bounded(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Four processes of one ordinary user hammer the control socket for a minute with the
    audit log on a 4 MiB tmpfs: every login in that minute succeeds (a code where one is
    due, a skip otherwise), the flooder's requests leave a handful of records with counts,
    and the log grows by a bounded amount."""
    flooder, enrolled, unenrolled = make_user(), make_user(), make_user()
    secret = mfad.enroll(enrolled)
    mfad.stop()
    with small_tmpfs(mfad.audit_path.parent, "4m"):
        mfad.start(mode="optional")
        size_before = mfad.audit_path.stat().st_size
        floods = [
            subprocess.Popen(
                [sys.executable, "-c", _FLOOD, str(mfad.control_socket), str(FLOOD_SECONDS)],
                user=flooder,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(FLOODERS)
        ]
        results, used_steps = [], set()
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            step = int(time.time()) // 30
            user, answers = (
                (enrolled, [totp_now(secret)]) if step not in used_steps else (unenrolled, [])
            )
            used_steps.add(step)
            with PamWire(mfad.pam_socket, timeout=10) as wire:  # the module's own timeout
                results.append((user == enrolled, wire.login(user, answers)[-1].payload))
            time.sleep(1)
        answered: dict[str, int] = {}
        for flood in floods:
            out, _ = flood.communicate(timeout=60)
            for error, count in json.loads(out).items():
                answered[error] = answered.get(error, 0) + count
        mfad.stop()  # writes the last counts of coalesced refusals
        records = mfad.audit()
        growth = mfad.audit_path.stat().st_size - size_before
    print(f"\nflood answers {answered}, {len(results)} logins, log grew {growth} bytes")
    assert all(result == ("S" if with_code else "K") for with_code, result in results), results
    assert sum(1 for with_code, _ in results if with_code) >= FLOOD_SECONDS // 30
    assert answered.get("rate_limited", 0) > 1000  # it really was a flood
    uid = int(subprocess.run(["id", "-u", flooder], capture_output=True, text=True).stdout)
    mine = [r for r in records if r.get("actor_uid") == uid]
    assert len(mine) <= 8, mine
    assert sum(r.get("repeated", 0) for r in mine) + len(
        [r for r in mine if r["event"] == "control"]
    ) == sum(answered.values())
    assert growth < 256 * 1024


def test_refusals_of_made_up_ops_are_coalesced_and_short(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A new, huge operation name in every request neither starts a new audit record each
    time nor gets written out: the log grows by a few hundred bytes, not megabytes."""
    user = make_user()
    child = (
        "import json, socket, sys\n"
        "from mfa_wire.framing import encode, recv_frame_blocking\n"
        "for i in range(20):\n"
        "    with socket.socket(socket.AF_UNIX) as s:\n"
        "        s.connect(sys.argv[1])\n"
        "        op = str(i) + '\\x7f' * 60000\n"
        "        s.sendall(encode('Q', json.dumps({'op': op}, ensure_ascii=False)))\n"
        "        recv_frame_blocking(s)\n"
    )
    before = mfad.audit_path.stat().st_size
    subprocess.run(
        [sys.executable, "-c", child, str(mfad.control_socket)], user=user, check=True, timeout=60
    )
    mfad.stop()
    assert mfad.audit_path.stat().st_size - before < 4096

"""Crash safety: `kill -9` during a login storm loses nothing and accepts no code twice.

A storm of PAM-protocol logins (right, wrong, replayed codes, and codes whose
answer a kill cut off) and control-socket enrolments runs while the daemon is
killed with SIGKILL at random moments and started again, ``MFA_KILL_CYCLES``
times (default 200, about a minute). After every restart, with the clients
paused, the test checks what a user or an administrator would notice:

* the SQLite store passes ``PRAGMA integrity_check``;
* every enrolment or disable the daemon acknowledged is still in force;
* no user's last accepted time step goes backwards, and no code is accepted
  twice, across any number of restarts;
* a login in flight at the kill never got RESULT S without the store having
  recorded it: the client saw EOF, which pam_mfa.so turns into
  PAM_AUTHINFO_UNAVAIL; and every recorded success belongs to a client that
  got S or was cut off;
* every wrong code a client was told about is still counted in the user's
  failure counters (lockout), and a counter is cleared only by a success;
* the audit log is one JSON record per line, its hash chain unbroken, with no
  false "audit_tampered" alarm caused by a mere crash.

Lockout is configured to count but never lock or delay (deny far above what the
storm reaches), so the counters can be compared without locks getting in the way.

Longer local run (about 0.35 s a cycle; the seed makes the clients' choices,
not the kill timing, repeatable)::

    MFA_KILL_CYCLES=5000 MFA_CRASH_SEED=7 .venv/bin/pytest tests/test_crash_safety.py -s
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
from conftest import Daemon, totp_now
from wire import PamWire, start_payload

from mfa_wire.framing import encode, recv_frame_blocking
from mfad.errors import ProtocolError
from mfad.lockout import login_source
from mfad.store import ACCOUNT_SOURCE

KILL_CYCLES = int(os.environ.get("MFA_KILL_CYCLES", "200"))
SEED = int(os.environ.get("MFA_CRASH_SEED", str(secrets.randbelow(2**32))))
STORM_MAX = 0.1  # seconds of storm between READY and the kill, uniformly drawn
LOGIN_THREADS = 4
LOGIN_USERS = 48
ENROL_USERS = 3
PERIOD = 30
CLIENT_TIMEOUT = 5.0  # a dead daemon gives EOF at once; waiting this long is a hang
GENESIS = "0" * 64
# count every wrong code, but never lock, block or slow anyone down within a run
NEVER_LOCK = {
    "deny": 1000,
    "source_deny": 1000,
    "fail_interval": 7 * 86400,
    "delay": 0,
    "lifetime_deny": 0,
}


def _step_now() -> int:
    return int(time.time()) // PERIOD


class Gate:
    """Lets clients run only while the daemon is up; `close` waits for calls in flight."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._open = False
        self._busy = 0
        self.finished = False

    @contextlib.contextmanager
    def call(self) -> Iterator[bool]:
        """One client call; yields False once the storm is over."""
        with self._cv:
            self._cv.wait_for(lambda: self._open or self.finished)
            self._busy += 1
        try:
            yield not self.finished
        finally:
            with self._cv:
                self._busy -= 1
                self._cv.notify_all()

    def open(self) -> None:
        with self._cv:
            self._open = True
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._open = False
            self._cv.wait_for(lambda: self._busy == 0)

    def finish(self) -> None:
        with self._cv:
            self.finished = True
            self._cv.notify_all()


@dataclass
class Tally:
    """What every client saw, and every broken promise, shared by all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


@dataclass
class LoginUser:
    """A seeded account driven by exactly one client thread, so its history is ordered."""

    name: str
    otp: pyotp.TOTP
    accepted: list[int] = field(default_factory=list)  # steps that got RESULT S, in order
    in_doubt: set[int] = field(default_factory=set)  # right code sent, then the daemon died
    cut: int = 0  # conversations that carried a right code and ended in EOF
    store_step: int = 0  # last_step the store showed at the previous check
    fails_low: int = 0  # bounds of the failure counter, from what the client was told
    fails_high: int = 0

    def code(self, step: int) -> str:
        return str(self.otp.at(step * PERIOD))


@dataclass
class EnrolUser:
    """A real local user enrolled and disabled over and over through the control socket."""

    name: str
    states: set[str] = field(default_factory=lambda: {"none"})  # what the store may hold
    confirmed: int = 0


def _plan(user: LoginUser, rng: random.Random) -> tuple[list[str], int | None]:
    """Answers for one conversation and the step of its one right code, if it has one."""
    now = _step_now()
    roll = rng.random()
    step: int | None
    if roll < 0.2 and user.accepted:
        step = rng.choice(user.accepted[-3:])  # a replay: must never succeed
    elif roll < 0.35 and user.in_doubt:
        step = max(user.in_doubt)  # the code a kill cut off: succeeds only if not recorded
    elif roll < 0.9:
        step = max((user.accepted or [0])[-1] + 1, now - 1)
    else:
        step = None
    near = {s: user.code(s) for s in range(now - 2, now + 3)}
    if step is not None and (
        not now - 1 <= step <= now + 1
        or list(near.values()).count(near[step]) > 1  # two steps share a code: ambiguous
    ):
        step = None
    wrong: list[str] = []
    while len(wrong) < (3 if step is None else rng.choice([0, 0, 0, 1, 2])):
        guess = f"{rng.randrange(10**6):06d}"
        if guess not in near.values():
            wrong.append(guess)
    return wrong + ([near[step]] if step is not None else []), step


class StormWire(PamWire):
    """PamWire that closes its socket when the connect fails (the daemon is down)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise


@dataclass
class Conversation:
    outcome: str  # RESULT payload, 'refused' (never connected), 'eof' (cut), 'timeout' (hung)
    sent: int = 0  # answers sent
    judged: int = 0  # answers the daemon reacted to with a further frame


def _converse(path: Path, user: str, answers: list[str]) -> Conversation:
    """One login as pam_mfa.so runs it; an empty answer once `answers` run out."""
    try:
        wire = StormWire(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return Conversation("refused")
    talk = Conversation("eof")
    with wire:
        try:
            wire.send("S", start_payload(user, service="crash-test"))
            while True:
                frame = wire.recv()
                talk.judged = talk.sent
                if frame.type == "R":
                    talk.outcome = frame.payload
                    return talk
                if frame.type in "Pp":
                    wire.send("A", answers[talk.sent] if talk.sent < len(answers) else "")
                    talk.sent += 1
        except TimeoutError:
            talk.outcome = "timeout"
        except (ProtocolError, OSError):
            pass
    return talk


def _count_failures(user: LoginUser, talk: Conversation, right_at: int | None) -> None:
    """Narrow the bounds of the user's failure counter by what this conversation showed.

    Every answer the daemon reacted to and that did not succeed was counted before
    the reaction; a success clears the counter. An answer cut off by the kill may or
    may not have been counted, and if it was the right code it may have cleared it.
    """
    if talk.outcome == "S":
        user.fails_low = user.fails_high = 0
        return
    user.fails_low += talk.judged
    user.fails_high += talk.judged
    if talk.sent > talk.judged:
        user.fails_high += 1
        if right_at == talk.judged:
            user.fails_low = 0


def _login_client(
    mfad: Daemon, users: list[LoginUser], gate: Gate, tally: Tally, rng: random.Random
) -> None:
    while True:
        user = rng.choice(users)
        answers, step = _plan(user, rng)
        with gate.call() as running:
            if not running:
                return
            talk = _converse(mfad.pam_socket, user.name, answers)
        outcome = talk.outcome
        tally.count(outcome)
        if outcome != "refused":
            _count_failures(user, talk, None if step is None else len(answers) - 1)
            if step is not None and user.accepted and step <= user.accepted[-1]:
                tally.count(f"replay:{outcome}")
            elif step in user.in_doubt:
                tally.count(f"retry after a kill:{outcome}")
        if outcome == "refused":
            time.sleep(0.002)  # the daemon is down until the gate closes
        elif outcome == "S":
            assert step is not None
            if user.accepted and step <= user.accepted[-1]:
                tally.violation(
                    f"{user.name}: step {step} accepted after step "
                    f"{user.accepted[-1]} was (a replayed code)"
                )
            user.accepted.append(step)
            user.in_doubt.discard(step)
        elif outcome == "M":
            if step is not None:
                user.in_doubt.discard(step)
        elif outcome == "eof":
            if step is not None:
                user.in_doubt.add(step)
                user.cut += 1
        else:
            tally.violation(f"{user.name}: unexpected outcome {outcome!r} for {answers}")


def _control(path: Path, op: str, **fields: Any) -> dict[str, Any] | str:
    """The JSON response, or 'refused' (never connected) or 'lost' (no response)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    with sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return "refused"
        try:
            sock.sendall(encode("Q", json.dumps({"op": op, **fields})))
            frame = recv_frame_blocking(sock)
        except TimeoutError:
            return "timeout"
        except (ProtocolError, OSError):
            return "lost"
    response: dict[str, Any] = json.loads(frame.payload)
    return response


def _enrol_client(mfad: Daemon, users: list[EnrolUser], gate: Gate, tally: Tally) -> None:
    def call(op: str, **fields: Any) -> dict[str, Any] | str | None:
        with gate.call() as running:
            if not running:
                return None
            response = _control(mfad.control_socket, op, **fields)
        tally.count(f"{op}:{response if isinstance(response, str) else response['ok']}")
        if response == "timeout":
            tally.violation(f"{op} {fields}: no response in {CLIENT_TIMEOUT}s")
        elif response == "refused":
            time.sleep(0.002)
        return response

    while not gate.finished:
        for user in users:
            if user.states == {"active"}:
                response = call("disable", user=user.name)
                if isinstance(response, dict):
                    if not response["ok"]:
                        tally.violation(f"disable {user.name} refused: {response}")
                    user.states = {"disabled"}
                elif response == "lost":
                    user.states.add("disabled")
                continue
            if len(user.states) > 1:
                continue  # the check after the restart resolves what the store holds
            begun = call("enroll_begin", user=user.name)
            if not isinstance(begun, dict):
                continue
            if not begun["ok"]:
                tally.violation(f"enroll_begin {user.name} refused: {begun}")
                continue
            confirmed = call("enroll_confirm", user=user.name, code=totp_now(begun["secret"]))
            if isinstance(confirmed, dict):
                if not confirmed["ok"]:
                    tally.violation(f"enroll_confirm {user.name} refused: {confirmed}")
                    continue
                user.states = {"active"}
                user.confirmed += 1
            elif confirmed == "lost":
                user.states.add("active")


class AuditChain:
    """Follows the audit log across restarts, checking each new line as it appears."""

    def __init__(self, path: Path, *, tamper_is_problem: bool = True) -> None:
        self.path = path
        self.tamper_is_problem = tamper_is_problem
        self.offset = 0
        self.prev = GENESIS
        self.seq = 0
        self.records = 0

    def check(self, when: str) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        done, newline, _partial = data.rpartition(b"\n")
        if not newline:
            return []
        self.offset += len(done) + 1
        problems: list[str] = []
        for line in done.split(b"\n"):
            try:
                record = json.loads(line)
                seq, prev = record["seq"], record["prev"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{when}: audit line is not a record: {line[:300]!r}")
                seq, prev, record = self.seq + 1, self.prev, {}
            if (seq, prev) != (self.seq + 1, self.prev):
                problems.append(
                    f"{when}: audit chain broken at seq {seq} "
                    f"(expected {self.seq + 1}): {line[:300]!r}"
                )
            if record.get("event") == "audit_tampered" and self.tamper_is_problem:
                problems.append(f"{when}: a kill was reported as tampering: {record['reason']}")
            self.seq, self.prev = seq, hashlib.sha256(line).hexdigest()
            self.records += 1
        return problems


def _check_store(
    mfad: Daemon, logins: list[LoginUser], enrols: list[EnrolUser], when: str
) -> list[str]:
    """Compare what the store holds now with what the clients were promised."""
    problems: list[str] = []
    with contextlib.closing(
        sqlite3.connect(f"file:{mfad.db_path}?mode=ro", uri=True, timeout=10)
    ) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            problems.append(f"{when}: integrity_check says {integrity}")
        last_step: dict[str, int] = dict(db.execute("SELECT user, last_step FROM accounts"))
        rows: dict[str, int] = dict(db.execute("SELECT user, count(*) FROM logins GROUP BY user"))
        failures: dict[tuple[str, str], int] = {
            (user, source): count
            for user, source, count in db.execute("SELECT user, source, failures FROM guard")
        }
    for user in logins:
        step, count = last_step.get(user.name), rows.get(user.name, 0)
        if step is None:
            problems.append(f"{when}: {user.name}'s account is gone")
            continue
        if step < user.store_step:
            problems.append(
                f"{when}: {user.name}'s last step went back from "
                f"{user.store_step} to {step} (a commit was lost)"
            )
        if user.accepted and step < user.accepted[-1]:
            problems.append(
                f"{when}: {user.name} got S for step {user.accepted[-1]} "
                f"but the store only has step {step}"
            )
        if not len(user.accepted) <= count <= len(user.accepted) + user.cut:
            problems.append(
                f"{when}: {user.name} has {count} recorded logins for "
                f"{len(user.accepted)} S results and {user.cut} cut off"
            )
        user.store_step = step
        counted = failures.get((user.name, ACCOUNT_SOURCE), 0)
        if not user.fails_low <= counted <= user.fails_high:
            problems.append(
                f"{when}: {user.name} has {counted} failures counted, the clients "
                f"saw between {user.fails_low} and {user.fails_high}"
            )
        if failures.get((user.name, login_source("")), 0) != counted:
            problems.append(f"{when}: {user.name}'s source and account counters differ")
        user.fails_low = user.fails_high = counted
    for enrol in enrols:
        status = mfad.request("status", user=enrol.name)
        if status["state"] not in enrol.states:
            problems.append(
                f"{when}: {enrol.name} is {status['state']!r}, "
                f"expected one of {sorted(enrol.states)}"
            )
        enrol.states = {status["state"]}
    return problems


def test_kill_9_during_login_storm_loses_nothing_and_replays_nothing(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """SIGKILL at random moments of a login and enrolment storm, then restart, many times:
    the store stays intact, acknowledged enrolments stay, no code succeeds twice, logins cut
    by the kill fail closed, and the audit chain stays whole."""
    rng = random.Random(SEED)
    print(f"\nseed {SEED}, {KILL_CYCLES} kill cycles")
    mfad.restart(lockout=NEVER_LOCK)
    logins = []
    for _ in range(LOGIN_USERS):
        secret, name = secrets.token_bytes(20), make_user()  # mfad resolves names: real users
        mfad.seed(name, secret)
        logins.append(LoginUser(name, pyotp.TOTP(base64.b32encode(secret).decode())))
    enrols = [EnrolUser(make_user()) for _ in range(ENROL_USERS)]
    gate, tally, chain = Gate(), Tally(), AuditChain(mfad.audit_path)
    threads = [
        threading.Thread(
            target=_login_client,
            args=(mfad, logins[i::LOGIN_THREADS], gate, tally, random.Random(rng.random())),
        )
        for i in range(LOGIN_THREADS)
    ]
    threads.append(threading.Thread(target=_enrol_client, args=(mfad, enrols, gate, tally)))
    problems: list[str] = []
    started = time.monotonic()
    restart_times: list[float] = []
    for thread in threads:
        thread.start()
    try:
        for cycle in range(KILL_CYCLES):
            gate.open()
            time.sleep(rng.uniform(0, STORM_MAX))
            mfad.kill()
            gate.close()
            began = time.monotonic()
            mfad.start(lockout=NEVER_LOCK)
            restart_times.append(time.monotonic() - began)
            problems += _check_store(mfad, logins, enrols, f"after kill {cycle + 1}")
            problems += chain.check(f"after kill {cycle + 1}")
            if len(problems) > 20:
                break
    finally:
        gate.finish()
        for thread in threads:
            thread.join(timeout=30)
    elapsed = time.monotonic() - started
    problems += _check_store(mfad, logins, enrols, "at the end")
    problems += chain.check("at the end")
    problems += tally.violations
    outcomes = tally.outcomes
    print(
        f"{KILL_CYCLES} cycles in {elapsed:.1f}s, restart mean "
        f"{sum(restart_times) / max(len(restart_times), 1):.3f}s max {max(restart_times):.3f}s"
    )
    print(f"outcomes: {dict(sorted(outcomes.items()))}")
    print(
        f"accepted steps: {sum(len(u.accepted) for u in logins)}, "
        f"cut after a right code: {sum(u.cut for u in logins)}, "
        f"enrolments confirmed: {sum(e.confirmed for e in enrols)}, "
        f"audit records checked: {chain.records}"
    )
    assert not problems, "\n".join(problems[:40])
    assert outcomes["timeout"] == 0, "a login hung instead of ending at the kill"
    assert outcomes["S"] > 0 and outcomes["M"] > 0
    assert outcomes["eof"] > 0, "no kill landed inside a conversation; the storm is too thin"
    assert sum(e.confirmed for e in enrols) > 0
    assert "Traceback" not in mfad.stderr()


def _head_file(mfad: Daemon) -> Path:
    return mfad.audit_path.with_name(mfad.audit_path.name + ".head")


def test_kill_between_audit_line_and_head_update_is_not_called_tampering(mfad: Daemon) -> None:
    """The disk as a kill leaves it between appending a record and updating <log>.head: the
    restarted daemon continues the chain and raises no tampering alarm, since nothing was
    removed or altered."""
    mfad.request("status", user="root")
    head_before = _head_file(mfad).read_bytes()
    mfad.stop()  # appends daemon_stop, then moves the head on to it
    _head_file(mfad).write_bytes(head_before)  # ... as if killed between those two writes
    mfad.start()
    mfad.stop()
    assert AuditChain(mfad.audit_path).check("after the restart") == []


def test_record_torn_by_a_kill_is_cut_and_the_chain_goes_on(mfad: Daemon) -> None:
    """A kill in the middle of appending a record leaves half a line without a newline; the
    restarted daemon cuts it, so every line is still one JSON record and the chain continues
    from the last whole record."""
    mfad.stop()
    whole = mfad.audit_path.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with mfad.audit_path.open("ab") as log:
        log.write(last[: len(last) // 2])  # half of a record, as a kill mid-write leaves it
    mfad.start()
    mfad.stop()
    assert mfad.audit_path.read_bytes().startswith(whole)
    assert AuditChain(mfad.audit_path, tamper_is_problem=False).check("after the restart") == []

"""Every login that names its user ends with a ``login`` record, whatever ends it.

A login is driven through the real pam_mfa.so (libpam under pam_wrapper) while the
real mfad is stopped with SIGSTOP: the module gives up after its own ``timeout=``,
and mfad, resumed later, finds the connection past its deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Daemon, totp_now
from pamtest import PamResult, authenticate, write_service

from mfad.conversation import START_TIMEOUT

MODULE_TIMEOUT = 2  # pam_mfa.so's timeout= in this test: it gives up long before mfad


def _wait_for(mfad: Daemon, found: Callable[[list[dict[str, Any]]], bool], limit: float) -> None:
    give_up = time.monotonic() + limit
    while not found(mfad.audit()):
        assert time.monotonic() < give_up, f"the record never came: {mfad.audit()[-3:]}"
        time.sleep(0.01)


def test_a_login_paused_past_the_modules_timeout_still_gets_its_outcome_record(
    mfad: Daemon, pam_module: Path, make_user: Callable[..., str]
) -> None:
    """mfad stopped (SIGSTOP) right after asking for the code, resumed (SIGCONT) only after
    the module gave up and after mfad's own deadline for the connection: the trail still
    holds that login's `login` record, outcome `aborted`, reason `deadline`, next to its
    `challenge`. Before this was fixed the deadline's TimeoutError was swallowed in
    server.py and the trail held a `challenge`/`pending` with no outcome at all."""
    login = {"max_attempts": 1, "prompt_timeout": 1}
    lockout = {"delay": 0, "max_delay": 0}
    mfad.restart(login=login, lockout=lockout)
    user = make_user()
    secret = mfad.enroll(user)
    services = mfad.tmp / "pam.d"
    stack = [f"auth required {pam_module} socket={mfad.pam_socket} timeout={MODULE_TIMEOUT}"]
    write_service(services, "sshd", stack)
    result: list[PamResult] = []
    # the answer comes after the module's timeout, so the module is waiting on mfad
    thread = threading.Thread(
        target=lambda: result.append(
            authenticate(
                services, "sshd", user, [totp_now(secret)], rhost="192.0.2.7", answer_delay=0.5
            )
        )
    )
    assert mfad.proc is not None
    thread.start()
    try:
        _wait_for(mfad, lambda rs: any(r["event"] == "challenge" for r in rs), 30)
        os.kill(mfad.proc.pid, signal.SIGSTOP)
        thread.join(60)
        # mfad's whole-connection deadline (server.py): past it, the paused login is cut
        deadline = START_TIMEOUT + (login["max_attempts"] + 1) * (login["prompt_timeout"] + 5)
        time.sleep(deadline + 1)
    finally:
        os.kill(mfad.proc.pid, signal.SIGCONT)
    assert result[0].name == "PAM_AUTHINFO_UNAVAIL"  # the module gave up: fail closed
    challenge = next(r for r in mfad.audit() if r["event"] == "challenge")
    _wait_for(
        mfad,
        lambda rs: any(r["event"] == "login" and r["session"] == challenge["session"] for r in rs),
        30,
    )
    outcome = next(
        r for r in mfad.audit() if r["event"] == "login" and r["session"] == challenge["session"]
    )
    assert outcome["outcome"] == "aborted"
    assert outcome["reason"] == "deadline"
    assert outcome["user"] == user and outcome["rhost"] == "192.0.2.7"
    assert mfad.proc.poll() is None


def test_a_login_under_way_at_shutdown_gets_its_outcome_record(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A login still waiting for its code when mfad is stopped (SIGTERM, past the shutdown
    grace) is recorded as `login`/`aborted` with reason `shutdown`."""
    from wire import PamWire, start_payload

    user = make_user()
    mfad.enroll(user)
    with PamWire(mfad.pam_socket, timeout=30) as wire:
        wire.send("S", start_payload(user, service="sshd", rhost="192.0.2.8"))
        assert wire.recv().type == "P"
        mfad.stop()
    records = mfad.audit()
    challenge = next(r for r in records if r["event"] == "challenge")
    outcome = [r for r in records if r["event"] == "login" and r["session"] == challenge["session"]]
    assert [(r["outcome"], r["reason"]) for r in outcome] == [("aborted", "shutdown")]
    assert records[-1]["event"] == "daemon_stop"

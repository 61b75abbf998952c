"""When something is wrong, mfad says so and refuses: a wrong key, a bug, a clock that went back.

Each of these let a login through, failed it silently or hid the cause on 5e2ee70:
a different key file was noticed only login by login; a bug before mfad's first
frame closed the socket without a RESULT, which `fail=open` turns into a skip,
and its traceback was dropped from the log; mfad opened up a private directory
holding its control socket; a code refused because the clock stepped back left
no trace for the administrator.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from conftest import Daemon, MakeUser, totp_now
from pamtest import authenticate, write_service
from wire import PamWire


def test_a_different_key_file_stops_mfad_at_start_with_a_clear_message(mfad: Daemon) -> None:
    """mfad refuses to start with a key file other than the one its secrets were sealed with,
    and says which file and what to do; with the original key it starts again."""
    mfad.enroll("root")
    mfad.stop()
    original = mfad.key_path.read_bytes()
    mfad.key_path.unlink()
    try:
        mfad.start()
    except RuntimeError as exc:
        failed = str(exc)
    else:
        raise AssertionError("mfad started with the wrong key")
    assert f"{mfad.key_path} is not the key this store's secrets were sealed with" in failed
    mfad.key_path.write_bytes(original)
    mfad.start()
    assert mfad.request("status", user="root")["state"] == "active"


def test_a_store_from_before_key_checks_is_checked_by_opening_a_secret(mfad: Daemon) -> None:
    """A store with no key check value yet (written by an older mfad) is tested with one of
    its sealed secrets: a wrong key stops mfad; the right one starts it and is recorded."""
    mfad.enroll("root")
    mfad.stop()
    with sqlite3.connect(mfad.db_path) as db:
        db.execute("DELETE FROM meta")
    original = mfad.key_path.read_bytes()
    mfad.key_path.unlink()
    try:
        mfad.start()
    except RuntimeError as exc:
        assert "is not the key this store's secrets were sealed with" in str(exc)
    else:
        raise AssertionError("mfad started with the wrong key")
    mfad.key_path.write_bytes(original)
    mfad.start()
    with sqlite3.connect(mfad.db_path) as db:
        assert db.execute("SELECT count(*) FROM meta WHERE key = 'key_check'").fetchone() == (1,)


def test_a_bug_before_the_first_frame_still_answers_a_result_even_with_fail_open(
    mfad: Daemon, pam_module: Path, make_user: MakeUser
) -> None:
    """A lock row the code cannot format (a tampered store: a lock until the year 10^292)
    makes mfad fail on that login before its first frame: it still answers UNAVAILABLE, so
    pam_mfa.so with fail=open returns PAM_AUTHINFO_UNAVAIL rather than PAM_IGNORE, and the
    traceback is in mfad's log."""
    user = make_user()
    mfad.enroll(user)
    with sqlite3.connect(mfad.db_path) as db:
        db.execute(
            "INSERT INTO guard (user, source, failures, first_at, until)"
            " VALUES (?, '*', 5, 0, 1e300)",
            (user,),
        )
    service_dir = mfad.tmp / "pam.d"
    marker = "pam_mfa returned PAM_IGNORE"
    write_service(
        service_dir,
        "sshd",
        [
            f"auth [success=done ignore=ignore default=die] {pam_module} "
            f"socket={mfad.pam_socket} fail=open",
            f"auth optional pam_echo.so {marker}",
            "auth required pam_deny.so",
        ],
    )
    result = authenticate(service_dir, "sshd", user, ["123456"], rhost="192.0.2.1")
    assert marker not in result.texts("info")
    assert result.name == "PAM_AUTHINFO_UNAVAIL", result
    errors = [
        json.loads(line) for line in mfad.stderr().splitlines() if '"login_internal_error"' in line
    ]
    assert errors and errors[-1]["exception"][0]["exc_type"] in ("OverflowError", "ValueError")
    frames = errors[-1]["exception"][0]["frames"]
    assert frames and not any("locals" in frame for frame in frames)  # they hold codes


def test_mfad_leaves_an_existing_private_socket_directory_private(tmp_path: Path) -> None:
    """A control socket configured inside a directory the administrator made 0700 stays
    reachable by root only: mfad does not open the directory up to 0755."""
    daemon = Daemon(Path(tmp_path))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    try:
        daemon.start(
            sockets={
                "pam": str(tmp_path / "run" / "pam.sock"),
                "control": str(private / "control.sock"),
            }
        )
        assert private.stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755  # one mfad made itself
    finally:
        daemon.stop()


def test_a_code_refused_because_the_clock_went_back_is_reported(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """When a later step than now was already used (this host's clock stepped back), the
    right code is refused as replayed and a clock_anomaly record tells the administrator
    which step was used and which one it is now."""
    user = make_user()
    secret = mfad.enroll(user)
    ahead = int(time.time()) // 30 + 40  # as if a code was taken 20 minutes from now
    with sqlite3.connect(mfad.db_path) as db:
        db.execute("UPDATE accounts SET last_step = ? WHERE user = ?", (ahead, user))
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login(user, [totp_now(secret, 1)], service="sshd")[-1].payload != "S"
    anomaly = [r for r in mfad.audit() if r["event"] == "clock_anomaly"]
    assert len(anomaly) == 1 and anomaly[0]["user"] == user
    assert anomaly[0]["last_used_step"] == ahead
    assert anomaly[0]["current_step"] in (int(time.time()) // 30 - 1, int(time.time()) // 30)

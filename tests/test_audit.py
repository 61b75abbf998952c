"""The audit trail read back through a real mfad: the chain verified, tampering named.

Logs are made by real logins on the PAM socket (tests/wire.py). Tampering is
done to a copy of such a log while mfad is stopped; mfad is then started on the
copy, as an administrator would point it at a suspect log, and asked to verify.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, totp_now
from wire import PamWire

from mfa_cli.client import DaemonClient
from mfa_cli.errors import DaemonUnreachable

WRONG = "000000"


def login(mfad: Daemon, user: str, answers: list[str], rhost: str = "192.0.2.10") -> str:
    """One conversation on the PAM socket; returns the RESULT byte."""
    with PamWire(mfad.pam_socket) as wire:
        frames = wire.login(user, answers, service="sshd", rhost=rhost)
    return frames[-1].payload


def make_log(mfad: Daemon, make_user: Callable[..., str]) -> str:
    """A log written by real traffic: an enrolment, two good logins, a refused request."""
    user = make_user()
    secret = mfad.enroll(user)
    assert login(mfad, user, [totp_now(secret)]) == "S"
    assert login(mfad, user, [totp_now(secret, +1)]) == "S"
    assert mfad.request("status")["error"] == "bad_request"  # no user named: refused
    return user


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def cut_while_stopped(mfad: Daemon, make_user: Callable[..., str]) -> tuple[list[bytes], int]:
    """A log from `make_log` with its last three records cut off while mfad was stopped,
    and mfad started again: the log's lines before the cut, and the seq of the last."""
    make_log(mfad, make_user)
    mfad.stop()
    lines = lines_of(mfad.audit_path)
    last_seq = json.loads(lines[-1])["seq"]
    mfad.audit_path.write_bytes(b"".join(lines[:-3]))
    mfad.start()
    return lines, int(last_seq)


def records_in(path: Path) -> list[dict[str, Any]]:
    """Parsed records of a log that may hold lines that are not records."""
    out = []
    for line in lines_of(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def copy_log(mfad: Daemon, name: str) -> Path:
    """The stopped daemon's log and head file, copied to a directory of their own."""
    target = mfad.tmp / name
    target.mkdir()
    shutil.copy2(mfad.audit_path, target / mfad.audit_path.name)
    head = mfad.audit_path.with_name(mfad.audit_path.name + ".head")
    shutil.copy2(head, target / head.name)
    return target / mfad.audit_path.name


def sha(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def the_success_login(lines: list[bytes], user: str) -> int:
    """Index of the user's first successful login record: a record in the middle of the log."""
    for i, line in enumerate(lines):
        record = json.loads(line)
        if (record["event"], record.get("outcome"), record.get("user")) == (
            "login",
            "success",
            user,
        ):
            return i
    raise AssertionError("no successful login in the log")


def test_verify_passes_an_untouched_log_of_real_logins(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A log written by an enrolment and real logins, across a daemon restart, verifies
    intact: every record counted, the chain starting at record 1, the head file matching."""
    make_log(mfad, make_user)
    mfad.restart()

    verdict = mfad.request("audit_verify")

    assert verdict["ok"] is True
    assert verdict["intact"] is True, verdict["first_bad"]
    assert verdict["first_bad"] is None
    records = records_in(mfad.audit_path)
    assert verdict["records"] == len(records)
    assert (verdict["first_seq"], verdict["last_seq"]) == (1, records[-1]["seq"])
    assert verdict["head"] == {"seq": records[-1]["seq"], "matches": True}
    assert verdict["files"] == [str(mfad.audit_path)]


def _edit(lines: list[bytes], i: int) -> list[bytes]:
    edited = lines[i].replace(b'"outcome":"success"', b'"outcome":"failure"')
    assert edited != lines[i]
    return [*lines[:i], edited, *lines[i + 1 :]]


TAMPERINGS: dict[str, Callable[[list[bytes], int], list[bytes]]] = {
    "edited": _edit,
    "deleted": lambda lines, i: [*lines[:i], *lines[i + 1 :]],
    "reordered": lambda lines, i: [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]],
    "truncated": lambda lines, i: lines[:i],
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_verify_names_the_first_bad_record_in_a_tampered_copy(
    mfad: Daemon, make_user: Callable[..., str], how: str
) -> None:
    """A copy of a real log with one record edited (a failure made a success), deleted, or
    swapped with the next, or with the log cut off from it on: mfad started on the copy
    reports the chain broken at exactly that record (file, line, sequence number) and says
    how. The original log still verifies intact."""
    user = make_log(mfad, make_user)
    mfad.stop()
    copy = copy_log(mfad, "suspect")
    lines = lines_of(copy)
    i = the_success_login(lines, user)
    seq = json.loads(lines[i])["seq"]
    copy.write_bytes(b"".join(TAMPERINGS[how](lines, i)))

    mfad.start(audit={"path": str(copy)})
    verdict = mfad.request("audit_verify")

    assert verdict["intact"] is False
    bad = verdict["first_bad"]
    assert (bad["file"], bad["line"], bad["seq"], bad["reason"]) == (str(copy), i + 1, seq, how)
    assert bad["message"]

    mfad.restart(audit={"path": str(mfad.audit_path)})
    assert mfad.request("audit_verify")["intact"] is True


def test_truncation_while_stopped_is_recorded_at_start_and_reported(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Cutting the last records off while mfad is stopped: at start mfad writes an
    `audit_tampered` record saying the log ends before the record its head file names,
    and verify reports the log truncated at the first record that is gone, even though
    the records written after the restart chain on correctly."""
    lines, last_seq = cut_while_stopped(mfad, make_user)

    verdict = mfad.request("audit_verify")

    tampered = [r for r in mfad.audit() if r["event"] == "audit_tampered"]
    assert len(tampered) == 1
    assert tampered[0]["outcome"] == "error"
    assert f"record {last_seq} was written last" in tampered[0]["reason"]
    bad = verdict["first_bad"]
    assert (bad["line"], bad["seq"], bad["reason"]) == (len(lines) - 2, last_seq - 2, "truncated")
    assert json.loads(bad["record"])["event"] == "audit_tampered"


def test_a_torn_last_line_is_reported_truncated(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """A log whose last line was cut in the middle (a crash, or a hand truncation while
    mfad was stopped) is reported truncated at that record; mfad also notices at start."""
    make_log(mfad, make_user)
    mfad.stop()
    copy = copy_log(mfad, "torn")
    lines = lines_of(copy)
    seq = json.loads(lines[-1])["seq"]
    copy.write_bytes(b"".join([*lines[:-1], lines[-1][: len(lines[-1]) // 2]]))

    mfad.start(audit={"path": str(copy)})
    verdict = mfad.request("audit_verify")

    bad = verdict["first_bad"]
    # mfad moved the fragment into an audit_repaired record (nothing is thrown away), then
    # found the head one record further on: the truncation is reported at record `seq`.
    assert (bad["seq"], bad["reason"]) == (seq, "truncated")
    records = [json.loads(line) for line in lines_of(copy)]
    repaired = next(r for r in records if r["event"] == "audit_repaired")
    assert repaired["fragment"] == lines[-1][: len(lines[-1]) // 2].decode()
    assert b'"event":"audit_tampered"' in copy.read_bytes()


def test_truncation_while_running_is_reported_against_the_head(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Records cut off the end of the live log while mfad runs (nothing written since)
    are found by comparing the log with the head file: verify says truncated and names
    the first missing record."""
    make_log(mfad, make_user)
    lines = lines_of(mfad.audit_path)
    last_seq = json.loads(lines[-1])["seq"]
    mfad.audit_path.write_bytes(b"".join(lines[:-2]))

    bad = mfad.request("audit_verify")["first_bad"]

    assert (bad["line"], bad["seq"], bad["reason"]) == (len(lines) - 1, last_seq - 1, "truncated")
    assert bad["record"] is None


def rotate(mfad: Daemon, compress_older: bool = False) -> None:
    """What logrotate does: shift the rotated files up, move the live log to .1, SIGHUP."""
    log = mfad.audit_path
    rotated = sorted(
        (
            p
            for p in log.parent.iterdir()
            if p.name.startswith(log.name + ".") and p.name.split(".")[2].isdigit()
        ),
        key=lambda p: -int(p.name.split(".")[2]),
    )
    for path in rotated:
        target = log.with_name(f"{log.name}.{int(path.name.split('.')[2]) + 1}")
        if path.name.endswith(".gz"):
            path.rename(f"{target}.gz")
        elif compress_older:
            Path(f"{target}.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
        else:
            path.rename(target)
    log.rename(log.with_name(log.name + ".1"))
    assert mfad.proc is not None
    mfad.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not (log.exists() and b'"event":"daemon_reload"' in log.read_bytes()):
        assert time.monotonic() < deadline, "mfad did not reopen its log after SIGHUP"
        time.sleep(0.02)


def test_rotation_keeps_the_chain_verifiable_across_files(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """Rotating the log twice (rename, SIGHUP; the older file compressed the second time,
    as logrotate's `compress` does) leaves three files whose chain runs through: the first
    record of each newer file holds the hash of the last line of the older one. Verify
    passes all of them, and a query finds the logins in every file. An edit in the
    rotated file is then reported there, by file and line."""
    user = make_user()
    secret = mfad.enroll(user)
    assert login(mfad, user, [totp_now(secret)]) == "S"
    rotate(mfad)
    assert login(mfad, user, [totp_now(secret, +1)]) == "S"
    rotate(mfad, compress_older=True)
    other = make_user()
    assert login(mfad, other, [totp_now(mfad.enroll(other))]) == "S"

    log = mfad.audit_path
    oldest = log.with_name(log.name + ".2.gz")
    middle = log.with_name(log.name + ".1")
    files = [gzip.decompress(oldest.read_bytes()).splitlines(), lines_of(middle), lines_of(log)]
    for older, newer in itertools.pairwise(files):
        assert json.loads(newer[0])["prev"] == sha(older[-1])

    verdict = mfad.request("audit_verify")

    assert verdict["intact"] is True, verdict["first_bad"]
    assert verdict["files"] == [str(oldest), str(middle), str(log)]
    assert verdict["records"] == sum(len(f) for f in files)
    logins = [
        r
        for f in DaemonClient(mfad.control_socket).stream("audit_query", event="login")
        for r in f["records"]
    ]
    assert [(r["user"], r["outcome"]) for r in logins] == [
        (user, "success"),
        (user, "success"),
        (other, "success"),
    ]

    lines = lines_of(middle)
    middle.write_bytes(b"".join([*lines[:-1], lines[-1].replace(b'"host":"', b'"host":"x')]))
    bad = mfad.request("audit_verify")["first_bad"]
    assert (bad["file"], bad["line"], bad["reason"]) == (str(middle), len(lines), "edited")


def test_audit_ops_need_no_user_but_refuse_bad_filters(mfad: Daemon) -> None:
    """The audit ops name no account (no `user` field needed); a malformed time or limit
    is refused as a bad request, and the refusal is audited."""
    assert mfad.request("audit_verify")["ok"] is True

    for fields in (
        {"since": "yesterday"},
        {"until": "2025-01-01T00:00:00"},
        {"limit": -1},
        {"user": 7},
    ):
        response = mfad.request("audit_query", **fields)

        assert response["ok"] is False
        assert response["error"] == "bad_request"
    refused = [r for r in mfad.audit() if r["event"] == "control" and r["outcome"] == "refused"]
    assert [r["op"] for r in refused] == ["audit_query"] * 4


def test_a_listing_larger_than_one_frame_arrives_whole(mfad: Daemon) -> None:
    """More records than fit one 64 KiB frame come back complete and in order, split over
    several frames, the last one saying how many matched."""
    for _ in range(400):
        mfad.request("status")  # refused (no user): one audited record each

    frames = list(DaemonClient(mfad.control_socket).stream("audit_query", event="control"))

    assert len(frames) > 2
    assert [f["more"] for f in frames] == [True] * (len(frames) - 1) + [False]
    records = [r for f in frames for r in f["records"]]
    assert len(records) == frames[-1]["matched"] == 400
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + 400))


def test_a_follow_sends_the_backlog_then_each_new_record(mfad: Daemon) -> None:
    """A follow answers with the matching recent records, then a `following` marker, then
    each new matching record in a frame of its own, as it is written; records that do
    not match the filter are not sent."""
    mfad.request("status")  # refused (no user): an audited control record
    stream = DaemonClient(mfad.control_socket, timeout=10).stream(
        "audit_follow", event="control", limit=5
    )
    backlog = next(stream)
    assert [r["op"] for r in backlog["records"]] == ["status"]
    assert next(stream)["following"] is True

    began = time.monotonic()
    mfad.stop()  # a follower does not hold up shutdown: it is ended at once
    assert time.monotonic() - began < 3
    with pytest.raises(DaemonUnreachable):
        next(stream)
    mfad.start()

    stream = DaemonClient(mfad.control_socket, timeout=10).stream(
        "audit_follow", event="control", limit=1
    )
    assert next(stream)["records"][0]["op"] == "status"
    assert next(stream)["following"] is True
    mfad.request("enroll_begin")  # refused: a new control record
    live = next(stream)
    stream.close()

    assert [(r["event"], r["op"]) for r in live["records"]] == [("control", "enroll_begin")]


def test_every_record_is_copied_to_stderr_for_journald(mfad: Daemon) -> None:
    """Each audit record also reaches the daemon's stderr (journald under systemd) as
    the very same line as in the file, in order, within a moment; the operational
    log lines on stderr in between are not audit records."""
    secret = mfad.enroll("root")
    with PamWire(mfad.pam_socket) as wire:
        assert wire.login("root", [WRONG, totp_now(secret)], service="sshd")[-1].payload == "S"
    lines = mfad.audit_path.read_text().splitlines()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        copied = [line for line in mfad.stderr().splitlines() if '"prev":' in line]
        if copied[-1:] == lines[-1:]:
            break
        time.sleep(0.05)
    assert copied == lines
    assert [json.loads(line)["event"] for line in copied][-3:] == ["challenge", "attempt", "login"]


def test_verify_reads_where_the_log_was_cut_from_fields_not_from_the_sentence(
    mfad: Daemon, make_user: Callable[..., str]
) -> None:
    """The `audit_tampered` record's `reason` is a sentence for people: reworded (and the
    chain recomputed, as a later wording would leave it), verify still reports the log
    truncated at the first record that is gone, from the record's log_seq and head_seq."""
    _, last_seq = cut_while_stopped(mfad, make_user)
    mfad.stop()
    records = [json.loads(line) for line in lines_of(mfad.audit_path)]
    prev, out = records[0]["prev"], []
    for record in records:
        if record["event"] == "audit_tampered":
            record["reason"] = "Log cut short."
        record["prev"] = prev
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        out.append(line + "\n")
        prev = hashlib.sha256(line.encode()).hexdigest()
    mfad.audit_path.write_text("".join(out))
    head = mfad.audit_path.with_name(mfad.audit_path.name + ".head")
    head.write_text(f"{records[-1]['seq']:020d} {prev}\n")
    mfad.start()
    bad = mfad.request("audit_verify")["first_bad"]
    assert (bad["seq"], bad["reason"]) == (last_seq - 2, "truncated")

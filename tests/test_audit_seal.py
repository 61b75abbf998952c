"""Forward-secure sealing: root on the host at epoch N cannot rewrite what was sealed before.

A real mfad on a fake wall clock (tests/fakeclock.py) seals its trail in 15-minute
epochs; the test moves the clock an epoch at a time, so epochs end without waiting.
Tampering is done the way an intruder with root would do it, on the files while
mfad is stopped: with the chain recomputed and the head file rewritten, and with
the sealing key the host holds (taken at epoch N) used for every record it can
still seal. Then the trail is verified with the verification key `mfa audit
seal-init` printed: by the restarted mfad (`mfa audit verify --key-file -`), or,
mfad left stopped, by the same verifier on the files (mfad.auditread.verify).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import SEEN, Daemon
from fakeclock import FakeClock
from wire import PamWire

from mfa_cli.main import cli
from mfad import auditread, seal
from mfad.audit import GENESIS, line_hash

pytest_plugins = ["fakeclock"]

EPOCH = 900


def mfa(mfad: Daemon, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--socket", str(mfad.control_socket), *args], input=stdin)


def note(mfad: Daemon, n: int = 1) -> None:
    """`n` audited logins by a PAM service that needs no second factor: one record each."""
    for _ in range(n):
        with PamWire(mfad.pam_socket) as wire:
            assert wire.login("root", [], service="cron")[-1].payload == "K"


def seal_init(mfad: Daemon) -> str:
    result = mfa(mfad, "audit", "seal-init")
    assert result.exit_code == 0, result.output
    vk = next(w for w in result.output.split() if w.startswith("mfadvk1-"))
    SEEN["secret"].add(vk)  # never to appear in a log (test_zz_no_secrets_in_logs)
    return vk


@pytest.fixture
def sealed(mfad_clock: Daemon, fake_clock: FakeClock) -> tuple[Daemon, FakeClock, str]:
    """A sealed trail over four epochs (0-3), with logins in each; now is epoch 3."""
    mfad_clock.base["services"] = {"cron": "off"}  # kept at every later (re)start
    mfad_clock.base["audit"]["seal_epoch"] = EPOCH
    mfad_clock.restart()
    vk = seal_init(mfad_clock)
    for _ in range(3):
        note(mfad_clock, 3)
        fake_clock.advance(EPOCH)
    note(mfad_clock, 2)
    return mfad_clock, fake_clock, vk


def lines(mfad: Daemon) -> list[str]:
    return mfad.audit_path.read_text().splitlines()


def index_of(rows: list[str], epoch: int, nth: int = 0) -> int:
    """The position of the nth login record sealed in `epoch`."""
    found = [
        i
        for i, ln in enumerate(rows)
        if json.loads(ln).get("epoch") == epoch and json.loads(ln)["event"] == "login"
    ]
    return found[nth]


def stolen_key(mfad: Daemon) -> seal.SealState:
    """What an intruder with root copies: the sealing key file as it is now."""
    state = seal.load(mfad.seal_key_path)
    assert state is not None
    return state


def reseal(rows: list[str], start: int, stolen: seal.SealState | None) -> list[str]:
    """The intruder's best effort from `start` on: renumber, recompute every `prev`, and
    re-MAC every record of an epoch the stolen key reaches; older records keep the MAC they
    had (there is no key for them any more)."""
    out = rows[:start]
    prev = line_hash(out[-1].encode()) if out else GENESIS
    seq = json.loads(out[-1])["seq"] if out else 0
    for row in rows[start:]:
        record = json.loads(row)
        old_mac = record.pop("mac", None)
        seq += 1
        record["seq"], record["prev"] = seq, prev
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        epoch = record.get("epoch")
        if stolen is not None and isinstance(epoch, int) and epoch >= stolen.epoch:
            key = seal.SealState(stolen.epoch, stolen.epochs, stolen.key)
            key.advance(epoch)
            text = seal.with_mac(text, key.key)
        elif old_mac is not None:
            text = text[:-1] + f',"mac":"{old_mac}"}}'
        out.append(text)
        prev = line_hash(text.encode())
    return out


def write(mfad: Daemon, rows: list[str], *, head: bool = True) -> None:
    """Replace the log, and make the head file agree with it (or remove it)."""
    mfad.audit_path.write_text("".join(f"{r}\n" for r in rows))
    head_file = mfad.audit_path.with_name("audit.jsonl.head")
    if head:
        last = rows[-1]
        head_file.write_text(f"{json.loads(last)['seq']:020d} {line_hash(last.encode())}\n")
    else:
        head_file.unlink(missing_ok=True)


def verdict_offline(mfad: Daemon, clock: FakeClock, vk: str) -> dict[str, Any]:
    key = seal.VerificationKey.parse(vk)
    return auditread.verify(mfad.audit_path, key, int(clock.now() * 1_000_000))


def verdict_online(mfad: Daemon, vk: str) -> dict[str, Any]:
    """`mfa audit verify --key-file - --json`, the key on stdin; exit 7 if not intact."""
    result = mfa(mfad, "audit", "verify", "--key-file", "-", "--json", stdin=vk + "\n")
    verdict: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if verdict["intact"] else 7), result.output
    return verdict


def first_bad(verdict: dict[str, Any]) -> tuple[str, int]:
    bad = verdict["first_bad"]
    assert bad is not None, "the tampering went unseen"
    return bad["reason"], bad["seq"]


# --- setting up ---


def test_seal_init_shows_the_key_once_and_the_host_keeps_only_the_epoch_key(
    sealed: tuple[Daemon, FakeClock, str], make_user: Callable[..., str]
) -> None:
    """seal-init prints the verification key and a QR code. The host keeps the current
    epoch's key only (0600), never k0 nor the printed key; a second seal-init is refused
    without --force, and an administrator who is not root may not run it at all."""
    mfad, _clock, vk = sealed
    k0 = seal.VerificationKey.parse(vk).k0
    give_up = time.monotonic() + 10  # the key file is replaced by a thread, soon after
    while stolen_key(mfad).epoch != 3 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert stolen_key(mfad).epoch == 3
    assert os.stat(mfad.seal_key_path).st_mode & 0o777 == 0o600
    for path in mfad.tmp.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert k0.hex().encode() not in data and vk.encode() not in data, path
            assert vk.split("-")[1].encode() not in data, path
    again = mfa(mfad, "audit", "seal-init")
    assert again.exit_code != 0 and "--force" in again.output
    admin = make_user()
    mfad.base["admin_group"] = "root"
    mfad.restart()
    subprocess.run(["usermod", "--append", "--groups", "root", admin], check=True)
    refused = mfad.mfa_as(admin, "audit", "seal-init")
    assert refused.returncode != 0
    assert "only root may start" in refused.stderr


def test_the_verification_key_is_never_taken_from_the_command_line() -> None:
    """`mfa audit verify` has no option that takes the key itself: only --key-file, a file
    or stdin, so the key is never in the process list for other users to read."""
    result = CliRunner().invoke(cli, ["audit", "verify", "--help"])
    assert "--key-file" in result.output
    assert "--key " not in result.output and "--key=" not in result.output


# --- an untouched trail ---


def test_an_untouched_sealed_trail_verifies_across_epochs_restarts_and_rotation(
    sealed: tuple[Daemon, FakeClock, str],
) -> None:
    """Epochs 0-3, a restart and a log rotation later, the trail verifies with the key:
    every record sealed with its own epoch's key, each ended epoch closed by its seal; and
    without the key the answer says that only the chain was checked."""
    mfad, clock, vk = sealed
    mfad.restart()
    os.rename(mfad.audit_path, mfad.audit_path.with_name("audit.jsonl.1"))
    assert mfad.proc is not None
    mfad.proc.send_signal(signal.SIGHUP)
    note(mfad, 1)
    clock.advance(EPOCH)
    note(mfad, 1)
    verdict = verdict_online(mfad, vk)
    assert verdict["intact"], verdict["first_bad"]
    assert verdict["checked"] == "chain+seal"
    assert len(verdict["files"]) == 2
    assert verdict["sealing"]["last_sealed_epoch"] == 3
    assert verdict["sealing"]["last_epoch"] == 4
    plain = mfa(mfad, "audit", "verify")
    assert plain.exit_code == 0
    assert "Checked: the hash chain only" in plain.output
    keyed = mfa(mfad, "audit", "verify", "--key-file", "-", stdin=vk)
    assert keyed.exit_code == 0
    assert "Last epoch verified and sealed: 3" in keyed.output
    mfad.stop()
    assert verdict_offline(mfad, clock, vk)["intact"]
    copy = subprocess.run(  # a copy checked elsewhere: the verifier without a daemon
        [sys.executable, "-m", "mfad.auditread", "--key-file", "-", str(mfad.audit_path)],
        input=vk,
        capture_output=True,
        text=True,
        check=False,
    )
    assert copy.returncode == 0, copy.stderr
    assert json.loads(copy.stdout)["sealing"]["last_epoch"] == 4


# --- tampering, each named ---


def _edit(mfad: Daemon, stolen: seal.SealState) -> int:
    rows = lines(mfad)
    i = index_of(rows, 1)
    rows[i] = rows[i].replace('"outcome":"skipped"', '"outcome":"success"')
    write(mfad, reseal(rows, i, stolen))
    return int(json.loads(rows[i])["seq"])


def _insert(mfad: Daemon, stolen: seal.SealState) -> int:
    """A forged record in epoch 1's time, sealed with the key the intruder has (epoch 3)."""
    rows = lines(mfad)
    i = index_of(rows, 1, 1)
    forged = json.loads(rows[i])
    forged["user"], forged["epoch"] = "mallory", stolen.epoch
    rows.insert(i, json.dumps(forged))
    write(mfad, reseal(rows, i, stolen))
    return int(forged["seq"])


def _delete(mfad: Daemon, stolen: seal.SealState) -> int:
    rows = lines(mfad)
    i = index_of(rows, 1)
    seq = json.loads(rows[i])["seq"]
    del rows[i]
    write(mfad, reseal(rows, i, stolen))
    return int(seq)


def _delete_plain(mfad: Daemon, stolen: seal.SealState) -> int:
    rows = lines(mfad)
    i = index_of(rows, 1)
    seq = json.loads(rows[i])["seq"]
    del rows[i]
    write(mfad, rows)
    return int(seq)


def _reorder(mfad: Daemon, stolen: seal.SealState) -> int:
    rows = lines(mfad)
    i = index_of(rows, 0)
    rows[i], rows[i + 1] = rows[i + 1], rows[i]
    write(mfad, reseal(rows, i, stolen))
    return int(json.loads(rows[i + 1])["seq"])


def _drop_epoch_seal(mfad: Daemon, stolen: seal.SealState) -> int:
    """The seal that closed epoch 2 removed; everything after it resealed."""
    rows = lines(mfad)
    i = next(
        n
        for n, r in enumerate(rows)
        if json.loads(r)["event"] == "audit_sealed" and json.loads(r)["epoch"] == 2
    )
    seq = json.loads(rows[i])["seq"]
    del rows[i]
    write(mfad, reseal(rows, i, stolen))
    return int(seq)


def _insert_unsealed(mfad: Daemon, stolen: seal.SealState) -> int:
    """A record without a seal slipped in among epoch 1's, the chain recomputed."""
    rows = lines(mfad)
    i = index_of(rows, 1)
    forged = json.loads(rows[i])
    for name in ("epoch", "mac"):
        del forged[name]
    rows.insert(i, json.dumps(forged, separators=(",", ":")))
    write(mfad, reseal(rows, i, stolen))
    return int(forged["seq"])


def _delete_whole_epochs(mfad: Daemon, stolen: seal.SealState) -> int:
    """Every record of epochs 1 and 2, their seals included, removed: epoch 0 ends with its
    true seal and epoch 3's records follow it, resealed (review of 2026-11-30)."""
    rows = lines(mfad)
    epochs = [json.loads(r).get("epoch") for r in rows]
    end0 = max(n for n, e in enumerate(epochs) if e == 0)
    first3 = epochs.index(3)
    kept = reseal(rows[: end0 + 1] + rows[first3:], end0 + 1, stolen)  # renumbered too
    write(mfad, kept)
    return int(json.loads(kept[end0 + 1])["seq"])


CASES: dict[str, tuple[Callable[[Daemon, seal.SealState], int], str]] = {
    "whole epochs deleted, chain recomputed": (_delete_whole_epochs, "deleted"),
    "inserted without a seal": (_insert_unsealed, "unsealed"),
    "edited": (_edit, "edited"),
    "inserted with a later epoch's key": (_insert, "edited"),
    "deleted, chain recomputed": (_delete, "edited"),
    "deleted": (_delete_plain, "deleted"),
    "reordered, chain recomputed": (_reorder, "edited"),
    "an epoch's seal deleted": (_drop_epoch_seal, "deleted"),
}


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "stopped"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampering_before_the_intruders_epoch_is_named(
    sealed: tuple[Daemon, FakeClock, str], case: str, restart: bool
) -> None:
    """With mfad stopped, a record of an earlier epoch is changed, added, removed or moved,
    the chain and the head recomputed, and every record the stolen key (epoch 3) can seal
    resealed. Verified with the key (by the restarted mfad, or on the files), the verdict
    names the record where the trail stops being true."""
    mfad, clock, vk = sealed
    mfad.stop()
    tamper, reason = CASES[case]
    seq = tamper(mfad, stolen_key(mfad))
    if restart:
        mfad.start()
        verdict = verdict_online(mfad, vk)
    else:
        verdict = verdict_offline(mfad, clock, vk)
    assert first_bad(verdict) == (reason, seq), verdict["first_bad"]


def test_a_cut_end_and_a_removed_head_are_named_as_truncation(
    sealed: tuple[Daemon, FakeClock, str],
) -> None:
    """The log cut back to a record of epoch 1 and its head file removed (nothing left to
    compare with): the trail ends epochs before now, which mfad never lets happen while it
    runs, so verify says truncated after that record; once mfad is restarted on the cut log,
    epoch 1 lacks its seal and verify says records were deleted there."""
    mfad, clock, vk = sealed
    mfad.stop()
    rows = lines(mfad)
    i = index_of(rows, 1, 1)
    write(mfad, rows[: i + 1], head=False)
    cut = json.loads(rows[i])["seq"]
    assert first_bad(verdict_offline(mfad, clock, vk)) == ("truncated", cut + 1)
    assert not verdict_offline(mfad, clock, vk)["head"]
    mfad.start()
    assert first_bad(verdict_online(mfad, vk)) == ("deleted", cut + 1)


def test_a_deleted_log_and_head_are_named(sealed: tuple[Daemon, FakeClock, str]) -> None:
    """The log and its head deleted and mfad restarted: it starts a new chain, sealed with
    the key it holds; verify says the records before it are gone."""
    mfad, _clock, vk = sealed
    mfad.stop()
    mfad.audit_path.unlink()
    mfad.audit_path.with_name("audit.jsonl.head").unlink()
    mfad.start()
    assert first_bad(verdict_online(mfad, vk)) == ("deleted", 1)


def _rotate(mfad: Daemon) -> None:
    """logrotate's way: shift the numbered files up, rename the log to .1, SIGHUP."""
    olds = sorted(mfad.audit_path.parent.glob("audit.jsonl.[0-9]*"), reverse=True)
    for old in olds:
        n = int(old.name.rsplit(".", 1)[1])
        old.rename(old.with_name(f"audit.jsonl.{n + 1}"))
    mfad.audit_path.rename(mfad.audit_path.with_name("audit.jsonl.1"))
    assert mfad.proc is not None
    mfad.proc.send_signal(signal.SIGHUP)
    note(mfad, 1)  # once mfad writes, it has reopened


@pytest.mark.parametrize("which", ["oldest", "middle"])
def test_a_deleted_rotated_file_is_named(sealed: tuple[Daemon, FakeClock, str], which: str) -> None:
    """Three rotated files and the live one; one rotated file deleted. The oldest gone takes
    the record that started the sealing with it; a middle one leaves a gap in the chain.
    Either way verify names the first record after what is missing."""
    mfad, clock, vk = sealed
    for _ in range(3):
        _rotate(mfad)
        clock.advance(EPOCH)
    victim = mfad.audit_path.with_name("audit.jsonl.3" if which == "oldest" else "audit.jsonl.2")
    first_after = json.loads(
        victim.with_name(f"audit.jsonl.{int(victim.name[-1]) - 1}").read_text().splitlines()[0]
    )["seq"]
    gone = [json.loads(r)["seq"] for r in victim.read_text().splitlines()]
    victim.unlink()
    reason, seq = first_bad(verdict_online(mfad, vk))
    if which == "oldest":
        assert (reason, seq) == ("deleted", first_after)
    else:
        assert (reason, seq) == ("deleted", gone[0])


# --- the attacker model ---


def test_a_key_copied_at_epoch_n_cannot_make_a_record_of_epoch_n_minus_1(
    sealed: tuple[Daemon, FakeClock, str],
) -> None:
    """The sealing key copied at epoch 3. A record for epoch 2 made with it fails whatever
    it claims: epoch 2 (its MAC is not epoch 2's), epoch 3 with a time in epoch 2 (a record
    verifies only with its own epoch's key: CVE-2023-31439's lesson), or epoch 3 with a
    time in epoch 3 put among epoch 2's records. Each is named; the untouched copy passes."""
    mfad, clock, vk = sealed
    mfad.stop()
    stolen = stolen_key(mfad)
    assert stolen.epoch == 3
    original = lines(mfad)
    assert verdict_offline(mfad, clock, vk)["intact"]
    i = index_of(original, 2)
    template = json.loads(original[i])
    forgeries = {
        "claims epoch 2": {"epoch": 2},
        "claims epoch 3, time in epoch 2": {"epoch": 3},
        "claims epoch 3, time in epoch 3": {"epoch": 3, "time": json.loads(original[-1])["time"]},
    }
    for name, change in forgeries.items():
        forged = {**template, "user": "mallory", **change}
        forged.pop("mac")
        text = seal.with_mac(json.dumps(forged, separators=(",", ":")), stolen.key)
        rows = reseal([*original[:i], text, *original[i:]], i + 1, stolen)
        write(mfad, rows)
        verdict = verdict_offline(mfad, clock, vk)
        assert verdict["first_bad"] is not None, name
        assert verdict["first_bad"]["seq"] == template["seq"], (name, verdict["first_bad"])
        assert verdict["sealing"]["last_sealed_epoch"] == 1, name


def test_a_key_file_torn_by_a_crash_mid_replace_is_recovered(
    sealed: tuple[Daemon, FakeClock, str],
) -> None:
    """Killed while replacing the key file (the new key written beside it, the old one half
    overwritten): mfad starts with the newest whole key, and the trail goes on verifying. A
    key file that is damaged with no whole copy stops mfad with a message saying what to do,
    instead of going on unsealed."""
    mfad, clock, vk = sealed
    mfad.stop()
    whole = mfad.seal_key_path.read_text()
    mfad.seal_key_path.with_name(mfad.seal_key_path.name + ".new").write_text(whole)
    mfad.seal_key_path.write_text(whole[: len(whole) // 2])
    mfad.start()
    clock.advance(EPOCH)
    note(mfad, 1)
    verdict = verdict_online(mfad, vk)
    assert verdict["intact"], verdict["first_bad"]
    assert verdict["sealing"]["last_sealed_epoch"] == 3
    mfad.stop()
    mfad.seal_key_path.write_text("garbage\n")
    with pytest.raises(RuntimeError, match="seal-init --force"):
        mfad.start()


def test_a_new_sealing_is_named_to_the_old_key_and_verifies_with_the_new(
    sealed: tuple[Daemon, FakeClock, str],
) -> None:
    """`seal-init --force` closes the old key's epoch with its seal and starts anew. The old
    key verifies up to there and says the trail was rekeyed (exit 7: the rest is not its to
    vouch for); the new key verifies from there, the records before it pinned by the chain."""
    mfad, _clock, old = sealed
    result = mfa(mfad, "audit", "seal-init", "--force")
    assert result.exit_code == 0, result.output
    new = next(w for w in result.output.split() if w.startswith("mfadvk1-"))
    SEEN["secret"].add(new)
    note(mfad, 1)
    restarted = [r for r in mfad.audit() if r["event"] == "audit_seal_init"][-1]
    assert restarted["actor"] == "root"
    assert first_bad(verdict_online(mfad, old)) == ("rekeyed", restarted["seq"])
    verdict = verdict_online(mfad, new)
    assert verdict["intact"], verdict["first_bad"]
    assert verdict["sealing"]["started_seq"] == restarted["seq"]
    assert verdict["sealing"]["unsealed_before"] == restarted["seq"] - 1


def test_audit_settings_are_validated_with_line_and_key() -> None:
    """A sealing epoch out of range or an unknown forwarding target is refused, naming the
    line and the key, like every other setting."""
    from mfad import config
    from mfad.errors import ConfigError

    with pytest.raises(ConfigError, match=r"line 2: audit.seal_epoch: .*1 to 86400"):
        config.parse("audit:\n  seal_epoch: 0\n")
    with pytest.raises(ConfigError, match=r"line 3: audit.forward: must be one of"):
        config.parse("audit:\n  seal_epoch: 60\n  forward: kafka\n")

"""A login that cannot be recorded is refused; the daemon lives on and recovers by itself."""

from __future__ import annotations

import pytest
from conftest import Daemon, MakeUser, totp_now
from diskfull import fill, small_tmpfs
from wire import PamWire


@pytest.mark.parametrize("required", [True, False])
def test_full_disk_refuses_logins_until_space_returns(mfad: Daemon, required: bool) -> None:
    """Disk full under the audit log: logins fail closed (or go on, with audit.required false),
    the daemon keeps running and says why, and freeing space lets logins through again."""
    secret = mfad.enroll("root")
    mfad.stop()
    with small_tmpfs(mfad.audit_path.parent, "256k"):
        mfad.start(mode="optional", audit={"required": required})
        filler = fill(mfad.audit_path.parent)
        # The log's last page may still hold a few records: skipped logins (each one audited)
        # use it up without touching any failure counter.
        results = []
        for _ in range(20):
            with PamWire(mfad.pam_socket) as wire:
                frames = wire.login("nobody-enrolled", [])
            results.append(frames[-1].payload)
            if "No space left on device" in mfad.stderr():
                break
        assert "No space left on device" in mfad.stderr()
        if required:
            assert results[-1] == "U"
            assert frames[-2].payload.startswith("Verification is unavailable")
        else:
            assert set(results) == {"K"}
        assert mfad.proc is not None and mfad.proc.poll() is None
        filler.unlink()
        with PamWire(mfad.pam_socket) as wire:
            assert wire.login("root", [totp_now(secret)])[-1].payload == "S"
        mfad.stop()


def test_on_a_full_disk_an_admin_change_is_not_made_without_its_record(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """With the audit log's disk full, `exempt` and `recovery_codes --regenerate` answer
    "unavailable" and change nothing: the user is not exempt (a code is still asked for),
    and the old recovery codes still work once space returns. On 5e2ee70 the exemption was
    in force with no record, and the codes were replaced but never shown."""
    user = make_user()
    secret = mfad.enroll(user)
    old_codes = mfad.request("recovery_codes", user=user, regenerate=True)["codes"]
    mfad.stop()
    with small_tmpfs(mfad.audit_path.parent, "256k"):
        mfad.start()
        filler = fill(mfad.audit_path.parent)
        for _ in range(50):  # use up the log's last page: records that still fit in it
            with PamWire(mfad.pam_socket) as wire:
                if wire.login("nobody-here", ["000000"])[-1].payload == "U":
                    break
        assert "No space left on device" in mfad.stderr()
        exempted = mfad.request("exempt", user=user, reason="disk full test")
        regenerated = mfad.request("recovery_codes", user=user, regenerate=True)
        assert exempted["ok"] is False and exempted["error"] == "unavailable", exempted
        assert regenerated["ok"] is False and "codes" not in regenerated, regenerated
        assert mfad.request("status", user=user)["state"] == "active"  # reads need no record
        filler.unlink()
        with PamWire(mfad.pam_socket) as wire:
            frames = wire.login(user, [old_codes[0]], service="sshd")
        assert frames[-1].payload == "S"  # asked for a code (not exempt); the old code works
        assert mfad.request("exempt", user=user, reason="space again")["changed"]
        exempt = [r for r in mfad.audit() if r["event"] == "control" and r["op"] == "exempt"]
        assert [r["reason"] for r in exempt] == ["space again"]
        mfad.stop()
    del secret

"""A login that cannot be recorded is refused; the daemon lives on and recovers by itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, totp_now
from wire import PamWire


@contextlib.contextmanager
def _small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(where)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("required", [True, False])
def test_full_disk_refuses_logins_until_space_returns(
    mfad: Daemon, required: bool
) -> None:
    """Disk full under the audit log: logins fail closed (or go on, with audit.required false),
    the daemon keeps running and says why, and freeing space lets logins through again."""
    secret = mfad.enroll("root")
    mfad.stop()
    with _small_tmpfs(mfad.audit_path.parent, "256k"):
        mfad.start(mode="optional", audit={"required": required})
        filler = _fill(mfad.audit_path.parent)
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

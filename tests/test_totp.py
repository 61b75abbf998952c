"""TOTP codes: RFC 6238's own vectors, and an independent implementation (oathtool)."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
from conftest import Daemon
from fakeclock import FakeClock
from wire import PamWire

from mfad import totp
from mfad.model import TokenParams

pytest_plugins = ["fakeclock"]

# RFC 6238 appendix B: 8-digit codes for the ASCII seeds below.
SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("when", "sha1", "sha256", "sha512"), VECTORS)
def test_rfc6238_vectors(when: int, sha1: str, sha256: str, sha512: str) -> None:
    """Every RFC 6238 test vector matches at offset 0 for all three hash algorithms."""
    for algorithm, code in (("SHA1", sha1), ("SHA256", sha256), ("SHA512", sha512)):
        params = TokenParams(algorithm, 8, 30)
        found = totp.match(SEEDS[algorithm], params, code, float(when), window=1)
        assert found is not None, algorithm
        assert (found.step, found.offset) == (when // 30, 0)


def test_code_from_another_step_is_not_matched_outside_window() -> None:
    """A code two steps away does not match with a window of one step."""
    params = TokenParams("SHA1", 8, 30)
    assert totp.match(SEEDS["SHA1"], params, "94287082", 59.0 + 60, window=1) is None
    assert totp.match(SEEDS["SHA1"], params, "94287082", 59.0 + 60, window=2) is not None


FULLWIDTH_DIGITS = "\uff11\uff12\uff13\uff14\uff15\uff16"


@pytest.mark.parametrize("answer", ["", "12345", "1234567", "12a456", FULLWIDTH_DIGITS, "-12345"])
def test_non_digit_or_wrong_length_codes_are_rejected_before_any_hashing(answer: str) -> None:
    """Anything but exactly `digits` ASCII digits (spaces forgiven) is not a code."""
    assert totp.normalise(answer, 6) is None
    assert totp.normalise(" 123 456 ", 6) == "123456"


def _oathtool(secret: bytes, when: float) -> str:
    b32 = base64.b32encode(secret).decode()
    out = subprocess.run(
        ["oathtool", "--totp", "-b", f"--now=@{int(when)}", b32],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_oathtool_codes_accepted_within_one_step_and_refused_at_two(
    mfad_clock: Daemon, fake_clock: FakeClock
) -> None:
    """Logins with oathtool's codes: -1, 0, +1 steps succeed; -2 and +2 are refused as wrong."""
    mfad = mfad_clock
    secret = os.urandom(20)
    mfad.seed("root", secret)
    now = fake_clock.now()  # mid-step, and it stands still: no step boundary to straddle
    results = {}
    for offset in (-2, -1, 0, 1, 2):  # increasing, so replay protection does not interfere
        code = _oathtool(secret, now + offset * 30)
        with PamWire(mfad.pam_socket) as wire:
            frames = wire.login("root", [code], service="test")
        results[offset] = frames[-1].payload
        if frames[-1].payload != "S":
            assert frames[1].payload == "Incorrect verification code."
    assert results == {-2: "M", -1: "S", 0: "S", 1: "S", 2: "M"}
    reasons = [r["reason"] for r in mfad.audit() if r["event"] == "attempt"]
    assert set(reasons) == {"incorrect_code", "malformed_code"}
    assert reasons.count("incorrect_code") == 2  # one per refused offset; the rest were empty

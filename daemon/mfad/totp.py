"""TOTP (RFC 6238) matching: which time step, if any, a code belongs to.

Pure functions of (secret, parameters, code, now): no clock, no store, so the
RFC test vectors and oathtool's codes can be checked directly. Every candidate
step in the window is computed and compared in constant time, whatever
matched earlier, so timing does not tell an attacker which step was close.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

import pyotp

from mfad.model import TokenParams

DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
# RFC 4226 asks for at least 128 bits and recommends 160; use the hash's own size.
SECRET_BYTES = {"SHA1": 20, "SHA256": 32, "SHA512": 64}


@dataclass(frozen=True, slots=True)
class Match:
    step: int  # the absolute time step (counter) the code was made for
    offset: int  # that step minus the current one: the phone's clock drift in steps


def new_secret(params: TokenParams) -> bytes:
    return os.urandom(SECRET_BYTES[params.algorithm])


def b32(secret: bytes) -> str:
    """The key as authenticator apps want it: base32 without padding."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


class _KeyedTOTP(pyotp.TOTP):
    """pyotp's TOTP, holding the key as bytes: pyotp decodes the base32 text again
    for every code, and a wrong code computes 41 of them (bench/RESULTS.md)."""

    def __init__(self, secret: bytes, params: TokenParams) -> None:
        self._key = secret  # first: pyotp's constructor checks the key through byte_secret
        super().__init__(
            b32(secret),
            digits=params.digits,
            digest=DIGESTS[params.algorithm],
            interval=params.period,
        )

    def byte_secret(self) -> bytes:
        return self._key


def provisioning_uri(secret: bytes, params: TokenParams, user: str, issuer: str) -> str:
    """The otpauth:// URI an app scans; it carries non-default parameters too."""
    return _KeyedTOTP(secret, params).provisioning_uri(name=user, issuer_name=issuer)


def normalise(code: str, digits: int) -> str | None:
    """The code as digits only, or None: spaces are forgiven, anything else is not."""
    cleaned = "".join(code.split())
    if len(cleaned) != digits or not cleaned.isascii() or not cleaned.isdigit():
        return None
    return cleaned


def match(secret: bytes, params: TokenParams, code: str, now: float, window: int) -> Match | None:
    """The step within ±window of now whose code equals `code`, nearest first."""
    otp = _KeyedTOTP(secret, params)
    current = int(now // params.period)
    found: Match | None = None
    for offset in sorted(range(-window, window + 1), key=abs):
        candidate = otp.generate_otp(current + offset)
        if hmac.compare_digest(candidate.encode(), code.encode()) and found is None:
            found = Match(current + offset, offset)
    return found


FAR_WINDOW = 20  # steps either side (10 minutes at 30 s) searched for a drifting phone


def far_offset(
    secret: bytes, params: TokenParams, code: str, now: float, window: int
) -> int | None:
    """Steps between now and a match outside the window but within FAR_WINDOW, if any.

    Never grounds for acceptance: only evidence of a phone clock that drifted,
    for the administrator (the commonest "codes don't work" support call).
    """
    otp = _KeyedTOTP(secret, params)
    current = int(now // params.period)
    found = None
    for offset in range(-FAR_WINDOW, FAR_WINDOW + 1):
        if abs(offset) > window and hmac.compare_digest(
            otp.generate_otp(current + offset).encode(), code.encode()
        ):
            found = offset if found is None or abs(offset) < abs(found) else found
    return found


def decoy(params: TokenParams, code: str, now: float, window: int) -> None:
    """Spend the same work as a wrong code costs a user who has a token."""
    dummy = b"\x00" * SECRET_BYTES[params.algorithm]
    match(dummy, params, code, now, window)
    far_offset(dummy, params, code, now, window)

"""HOTP (RFC 4226) matching: which counter, if any, a code belongs to.

Pure functions of (secret, parameters, code, last counter used), like totp.py,
so RFC 4226 Appendix D's values and oathtool's codes can be checked directly.
A hardware token's counter moves each time its button is pressed, login or
not, so the server looks ahead of the last counter it accepted (`look_ahead`,
RFC 4226 7.4); a token pressed further than that is brought back by two
consecutive codes (`resync`, RFC 4226 7.4's resynchronisation). Every
candidate is computed and compared in constant time, whatever matched first.
The verifier (verify.py) is the only caller: the counter a code matched counts
as used only once store.consume_step has marked it, atomically.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import pyotp

from mfad.model import TokenParams
from mfad.totp import DIGESTS, SECRET_BYTES, b32

RESYNC_WINDOW = 1000
"""Counters past the last one used searched for two consecutive codes: far more than
anyone presses a token by accident, few enough that two six-digit codes matching by
chance (about one in 10**9 over the window) is no risk."""


@dataclass(frozen=True, slots=True)
class Match:
    counter: int  # the counter the code was made for
    replayed: bool  # at or below the last counter used: refused, not accepted


class _KeyedHOTP(pyotp.HOTP):
    """pyotp's HOTP holding the key as bytes (as totp._KeyedTOTP, for the same reason)."""

    def __init__(self, secret: bytes, params: TokenParams) -> None:
        self._key = secret
        super().__init__(b32(secret), digits=params.digits, digest=DIGESTS[params.algorithm])

    def byte_secret(self) -> bytes:
        return self._key


def code_at(secret: bytes, params: TokenParams, counter: int) -> str:
    return _KeyedHOTP(secret, params).at(counter)


def match(
    secret: bytes, params: TokenParams, code: str, last: int | None, look_ahead: int
) -> Match | None:
    """The counter of `code` among the `look_ahead` after `last`, or among as many at or
    below it (then `replayed`, so the refusal can say why); nearest the next first."""
    otp = _KeyedHOTP(secret, params)
    following = 0 if last is None else last + 1
    found: Match | None = None
    for counter in range(max(0, following - look_ahead), following + look_ahead):
        if hmac.compare_digest(otp.at(counter).encode(), code.encode()) and (
            found is None or found.replayed
        ):
            found = Match(counter, counter < following)
    return found


def resync(
    secret: bytes, params: TokenParams, first: str, second: str, last: int | None
) -> int | None:
    """The counter of `second` when `first` and `second` are the codes of two consecutive
    counters within RESYNC_WINDOW after `last`; None if there are none."""
    otp = _KeyedHOTP(secret, params)
    following = 0 if last is None else last + 1
    found: int | None = None
    previous = otp.at(following).encode()
    for counter in range(following + 1, following + RESYNC_WINDOW + 1):
        current = otp.at(counter).encode()
        hit = hmac.compare_digest(previous, first.encode()) & hmac.compare_digest(
            current, second.encode()
        )
        if hit and found is None:
            found = counter
        previous = current
    return found


def decoy(params: TokenParams, code: str, look_ahead: int) -> None:
    """Spend the work a wrong code costs a user who has a token."""
    match(b"\x00" * SECRET_BYTES[params.algorithm], params, code, 10**6, look_ahead)

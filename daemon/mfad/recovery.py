"""Recovery codes: single-use, high-entropy, unambiguous, stored only as keyed digests.

A code is 10 characters from a 30-symbol alphabet without 0/O, 1/I/L or U
(49 bits), shown as ``ABCDE-FGHJK``. The store keeps HMAC-SHA256 digests keyed
by the secret key file (see SecretBox.digest): a stolen database alone
does not allow an offline search, and lookup is by digest, so no code is
ever compared character by character.
"""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 10
COUNT = 10
WARN_AT = 2  # warn at login when this many or fewer remain

def generate(count: int = COUNT) -> list[str]:
    return [_format("".join(secrets.choice(ALPHABET) for _ in range(LENGTH))) for _ in range(count)]


def _format(raw: str) -> str:
    return f"{raw[:5]}-{raw[5:]}"


def normalise(answer: str) -> str | None:
    """The canonical code if `answer` has the shape of one (any case, spaces, dash), else None."""
    raw = "".join(answer.split()).replace("-", "").upper()
    if len(raw) != LENGTH or any(c not in ALPHABET for c in raw):
        return None
    return _format(raw)

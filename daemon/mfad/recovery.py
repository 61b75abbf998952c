"""Recovery codes: single-use, high-entropy, unambiguous, stored only as keyed digests.

A code is 15 characters from a 30-symbol alphabet without 0/O, 1/I/L or U
(73 bits; NIST SP 800-63B asks at least 64 of a look-up secret), shown as
``ABCDE-FGHJK-MNPQR``. Codes made before that were 10 characters (49 bits) and
are still taken until they are used or replaced. Scratch codes imported from
google-authenticator (``mfa import google-authenticator``) are eight digits
(27 bits): they are kept so that printed ones go on working, the guard limits
guessing them as any code, and the import suggests a new set. The store keeps
HMAC-SHA256 digests keyed by the secret key file (see SecretBox.digest): a
stolen database alone does not allow an offline search, and lookup is by
digest, so no code is ever compared character by character.
"""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 15
OLD_LENGTH = 10  # codes made by earlier versions
COUNT = 10
WARN_AT = 2  # warn at login when this many or fewer remain


def generate(count: int = COUNT) -> list[str]:
    return [_format("".join(secrets.choice(ALPHABET) for _ in range(LENGTH))) for _ in range(count)]


def _format(raw: str) -> str:
    return "-".join(raw[i : i + 5] for i in range(0, len(raw), 5))


SCRATCH_LENGTH = 8  # google-authenticator's scratch codes: digits only


def normalise(answer: str) -> str | None:
    """The canonical code if `answer` has the shape of one (any case, spaces, dash), else None."""
    raw = "".join(answer.split()).replace("-", "").upper()
    if len(raw) == SCRATCH_LENGTH and raw.isascii() and raw.isdigit():
        return raw
    if len(raw) not in (LENGTH, OLD_LENGTH) or any(c not in ALPHABET for c in raw):
        return None
    return _format(raw)

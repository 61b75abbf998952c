"""The PAM socket's frames and the START record (docs/protocol.md, version 1)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mfad.errors import ProtocolError
from mfad.framing import Frame
from mfad.identity import MAX_USER, valid_user_name

VERSION = "1"
MAX_VALUE = 1024
__all__ = ["MAX_USER", "MAX_VALUE", "VERSION", "Outcome", "Start", "T", "parse_start"]


class T:
    """Frame type bytes."""

    START = "S"
    ANSWER = "A"
    PROMPT_OFF = "P"
    PROMPT_ON = "p"
    INFO = "I"
    ERROR = "E"
    RESULT = "R"
    REQUEST = "Q"
    RESPONSE = "J"


class Outcome(enum.Enum):
    """RESULT payloads; the module maps each to one PAM code."""

    SUCCESS = "S"  # PAM_SUCCESS
    FAILURE = "F"  # PAM_AUTH_ERR
    MAXTRIES = "M"  # PAM_MAXTRIES
    SKIP = "K"  # PAM_IGNORE
    UNAVAILABLE = "U"  # PAM_AUTHINFO_UNAVAIL


@dataclass(frozen=True, slots=True)
class Start:
    user: str
    service: str = ""
    rhost: str = ""
    ruser: str = ""
    tty: str = ""


_FIELDS = ("user", "service", "rhost", "ruser", "tty")


def parse_start(frame: Frame) -> Start:
    """Validate a START frame: version, required user, sizes, no repeated keys."""
    if frame.type != T.START:
        raise ProtocolError(f"expected START, got a {frame.type!r} frame")
    pairs: dict[str, str] = {}
    for item in frame.payload.split("\0"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ProtocolError("START item without '='")
        if key in pairs:
            raise ProtocolError(f"START repeats the key {key!r}")
        if len(value.encode()) > MAX_VALUE:
            raise ProtocolError(f"START value of {key!r} is longer than {MAX_VALUE} bytes")
        pairs[key] = value
    if pairs.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {pairs.get('v')!r}")
    if not valid_user_name(pairs.get("user")):
        raise ProtocolError("START has a missing or unusable user name")
    return Start(**{k: pairs.get(k, "") for k in _FIELDS})

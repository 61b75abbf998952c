"""The frame type letters of both sockets, and the PAM socket's RESULT outcomes."""

from __future__ import annotations

import enum


class T:
    """Frame type bytes (docs/protocol.md): the PAM socket's, then the control socket's."""

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

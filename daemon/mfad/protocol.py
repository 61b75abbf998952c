"""The PAM socket's START record (docs/protocol.md, version 1).

The frames themselves, their type letters (T) and the RESULT outcomes (Outcome)
are the wire package's (mfa_wire.framing, mfa_wire.frametypes), shared with the
CLI; what stays here is the daemon's reading of START, which needs mfad's one
user-name rule (identity.valid_user_name).
"""

from __future__ import annotations

from dataclasses import dataclass

from mfa_wire.errors import ProtocolError
from mfa_wire.frametypes import T
from mfa_wire.framing import Frame
from mfad.identity import MAX_USER, valid_user_name

VERSION = "1"
MAX_VALUE = 1024
__all__ = ["MAX_USER", "MAX_VALUE", "VERSION", "Start", "parse_start"]


@dataclass(frozen=True, slots=True)
class Start:
    user: str
    service: str = ""
    rhost: str = ""
    ruser: str = ""
    tty: str = ""
    # PAM_SILENT: the module shows no INFO, so nothing the user needs may travel as INFO
    silent: bool = False


_FIELDS = ("user", "service", "rhost", "ruser", "tty")
_FLAGS = {"0": False, "1": True}


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
    silent = _FLAGS.get(pairs.get("silent", "0"))
    if silent is None:
        raise ProtocolError("START silent= must be 0 or 1")
    return Start(**{k: pairs.get(k, "") for k in _FIELDS}, silent=silent)

"""The control socket's codec (docs/protocol.md, "Control socket").

A request is one REQUEST frame carrying ``{"op": "...", ...}``; an answer is one
RESPONSE frame carrying ``{"ok": true, ...}`` or ``{"ok": false, "error": CODE,
"message": TEXT}`` or, for the streamed ops, several such frames, each holding a
chunk of the answer's items (``json_chunks``) small enough for one frame.
mfad (mfad.control, mfad.server, mfad.accounts) and mfa (mfa_cli.client) both
encode and decode here, so the two ends cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from mfa_wire.errors import BadMessage, ErrorCode
from mfa_wire.frametypes import T
from mfa_wire.framing import MAX_FRAME, Frame, encode

FRAME_BUDGET = MAX_FRAME - 4096
"""Bytes of items per frame of a streamed answer; the rest of MAX_FRAME is room for the
response's own fields around them (``{"ok": true, "records": [...], "more": true}``)."""

Item = TypeVar("Item")


def encode_request(op: str, fields: Mapping[str, Any]) -> bytes:
    """The REQUEST frame for ``{"op": op, **fields}``; ProtocolError if it is too large."""
    return encode(T.REQUEST, json.dumps({"op": op, **fields}, ensure_ascii=False))


def decode_request(frame: Frame) -> dict[str, Any]:
    """The request object in a frame; BadMessage (to be answered ``bad_request``) if the
    frame is not a REQUEST or its payload not a JSON object."""
    if frame.type != T.REQUEST:
        raise BadMessage(f"expected a REQUEST frame, got {frame.type!r}")
    try:
        parsed = json.loads(frame.payload)
    except (ValueError, RecursionError):
        raise BadMessage("the request is not JSON (or nested too deeply)") from None
    if not isinstance(parsed, dict):
        raise BadMessage("the request must be a JSON object")
    return parsed


def encode_response(response: Mapping[str, Any]) -> bytes:
    """The RESPONSE frame for one response object; ProtocolError if it is too large."""
    return encode(T.RESPONSE, json.dumps(response))


def decode_response(frame: Frame) -> dict[str, Any]:
    """The response object in a frame, ``ok`` true or false; BadMessage if the frame is not
    a RESPONSE carrying a JSON object with a boolean ``ok``."""
    if frame.type != T.RESPONSE:
        raise BadMessage(f"expected a RESPONSE frame, got {frame.type!r}")
    try:
        response = json.loads(frame.payload)
    except (ValueError, RecursionError):
        raise BadMessage("the response is not JSON (or nested too deeply)") from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise BadMessage("the response is not a JSON object with a boolean `ok`")
    return response


def failure(code: ErrorCode, message: str) -> dict[str, Any]:
    """A refusal: ``{"ok": false, "error": code, "message": message}``."""
    return {"ok": False, "error": code, "message": message}


def json_chunks(
    items: Iterable[Item], oversize: Callable[[Item, int], Item] | None = None
) -> Iterator[list[Item]]:
    """Consecutive groups of items whose JSON together fits FRAME_BUDGET, one group per
    frame of a streamed answer. An item larger than the budget alone is replaced by
    ``oversize(item, its JSON's length)``, a summary that fits, or else is a group of its own
    (and its frame may then be too large to send)."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        length = _size(item)
        if length > FRAME_BUDGET and oversize is not None:
            item = oversize(item, length - _SEPARATOR)
            length = _size(item)
        if chunk and size + length > FRAME_BUDGET:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        yield chunk


_SEPARATOR = len(", ")


def _size(item: Any) -> int:
    """Bytes ``item`` adds to a JSON list, as encode_response writes it (ASCII only)."""
    return len(json.dumps(item)) + _SEPARATOR

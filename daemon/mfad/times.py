"""Times in answers, records and requests: RFC 3339 UTC text, one formatter, one parser.

A request's time must carry its zone (``Z`` or an offset): a bare local-looking
time would mean one thing to the administrator and another to the daemon.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from mfad.errors import RequestError


def iso(ts: float | None) -> str | None:
    """`ts` as RFC 3339 UTC to the second; None for none, 0 (unset) and inf (for ever)."""
    if ts is None or ts == 0 or math.isinf(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def parse(text: str) -> datetime:
    """An RFC 3339 time with a zone, as an aware UTC datetime; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(UTC)


def from_request(request: dict[str, Any], name: str) -> datetime | None:
    """The time a request gives in `name`, if any; RequestError saying what is expected."""
    value = request.get(name)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return parse(value)
    except ValueError:
        raise RequestError(
            f"`{name}` must be an RFC 3339 time with a zone, such as 2025-01-31T08:00:00Z"
        ) from None

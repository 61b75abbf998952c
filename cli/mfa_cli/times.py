"""Times as people type them (`2h`, `7d`, `2025-01-31 08:00`) and as mfad wants them (RFC 3339).

Shared by `mfa audit --since/--until` (durations count back from now) and
`mfa exempt --until` (durations count forward).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(?:\d+[smhdw])+")

TIME_HELP = (
    "a duration (30m, 12h, 7d, 1d12h) or a time: RFC 3339 (2025-01-31T08:00:00Z) "
    "or YYYY-MM-DD[ HH:MM] in local time"
)


def parse_when(text: str, now: datetime, *, ahead: bool = False) -> datetime:
    """`30m`, `2h`, `1d12h` ago (`ahead`: from now), or an absolute time: RFC 3339,
    `YYYY-MM-DD[ HH:MM[:SS]]`.

    An absolute time without a zone is the local time of this machine.
    """
    compact = text.strip().replace(" ", "").lower()
    if _RELATIVE.fullmatch(compact):
        seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", compact))
        return now + timedelta(seconds=seconds) if ahead else now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor a time "
            "(2025-01-31, '2025-01-31 08:00', 2025-01-31T08:00:00Z)"
        ) from None
    return moment.astimezone(UTC)  # a naive time is taken as local time


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_text(text: Any) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` in UTC; anything else as it is."""
    try:
        return datetime.fromisoformat(str(text)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(text)

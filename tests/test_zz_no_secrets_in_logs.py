"""Runs last: no secret, code or recovery code the suite used reaches any daemon log.

conftest.py remembers every base32 key, TOTP code and recovery code handed out
during the run, and keeps a copy of every test daemon's audit log and stderr.
Keys and recovery codes are distinctive and are searched for as plain text.
A six-digit code could appear by chance inside a hash, a pid, a sequence
number or a longer number, so codes are looked for as whole runs of digits in
the text values of each record, where a typed code would have gone, leaving
out the fields that are hashes and ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LOG_ARCHIVE, SEEN

NOT_TEXT = {"prev", "mac", "session", "peer", "time"}  # hashes, seals, random ids, times
DIGITS = re.compile(r"\d{6,}")


def _texts(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, str) and key not in NOT_TEXT:
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _texts(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v, key)


def test_no_secret_code_or_recovery_code_appears_in_any_log() -> None:
    """Every log the suite's daemons wrote is free of every secret the suite used."""
    logs = sorted(p for p in LOG_ARCHIVE.rglob("*") if p.is_file()) if LOG_ARCHIVE.exists() else []
    if not logs or not SEEN["secret"]:
        pytest.skip("run with the rest of the suite: no daemon logs or secrets were collected")
    found = []
    for log in logs:
        raw = log.read_text(errors="replace")
        for kind in ("secret", "recovery code"):
            found += [f"{kind} {s[:4]}… in {log}" for s in SEEN[kind] if s in raw]
        for line in raw.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = line  # not JSON (a traceback, say): all of it is text
            for text in _texts(record):
                # a code would stand as a run of digits of its own; a longer run (a frame
                # length a fuzzer sent, say) that merely contains one is no leak
                found += [
                    f"code in {log}: {text[:80]!r}"
                    for run in DIGITS.findall(text)
                    if run in SEEN["code"]
                ]
    print(
        f"searched {len(logs)} logs for {len(SEEN['secret'])} keys, {len(SEEN['code'])} "
        f"codes and {len(SEEN['recovery code'])} recovery codes"
    )
    assert not found, "\n".join(found[:20])

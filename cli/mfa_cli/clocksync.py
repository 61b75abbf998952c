"""Is the system clock synchronised? Asked of timedatectl, chronyc or ntpq (ntpsec), the
first that answers; None when none can tell (no such tool, or not running).
"""

from __future__ import annotations

import shutil
import subprocess


def synchronised() -> tuple[bool, str] | None:
    """(synchronised, which tool said so), or None if no tool can tell."""
    for probe in (_timedatectl, _chrony, _ntpq):
        verdict = probe()
        if verdict is not None:
            return verdict
    return None


def _run(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _timedatectl() -> tuple[bool, str] | None:
    out = _run("timedatectl", "show", "--property=NTPSynchronized", "--value")
    if out is None or out.strip() not in ("yes", "no"):
        return None
    return out.strip() == "yes", "timedatectl"


def _chrony() -> tuple[bool, str] | None:
    out = _run("chronyc", "-n", "tracking")
    if out is None or "Leap status" not in out:
        return None
    return "Not synchronised" not in out, "chronyc tracking"


def _ntpq() -> tuple[bool, str] | None:
    out = _run("ntpq", "-c", "rv 0 leap")
    if out is None or "leap=" not in out:
        return None
    return "leap=11" not in out and "leap=3" not in out, "ntpq"

"""Text from mfad made safe to print on a terminal.

Much of what `mfa` prints comes from outside: user names in refused requests,
PAM_RHOST, PAM_TTY and PAM_RUSER of logins, exemption reasons, the daemon's
messages. A terminal obeys control characters in it: ESC and the C1 control
CSI (U+009B) start sequences that recolour or clear the screen, retitle the
window or move the cursor, so a user name could fake or hide lines of output
shown to an administrator. So, everywhere `mfa` prints such text:

* human-readable output goes through ``safe`` (a whole daemon answer through
  ``clean``) exactly once, as it is printed; error messages are escaped by
  mfa_cli.errors.CliError when shown, so they are built from raw text;
* JSON goes through ``json_text``, which escapes what ``json.dumps`` leaves raw;
* CSV cells are ``safe`` text.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(value: object) -> str:
    """``value`` as text a terminal shows literally: every control character escaped.

    Each C0 control (U+0000-U+001F: ESC, BEL, newline, tab, ...), DEL (U+007F)
    and C1 control (U+0080-U+009F: CSI, OSC, ...) becomes a backslash, ``x``
    and two lowercase hex digits (ESC is ``\\x1b``, CSI ``\\x9b``); a lone
    surrogate (undecodable bytes) becomes ``\\udcXX``, so that printing cannot
    fail. A backslash itself is shown doubled (``\\\\``), so the escaping is
    unambiguous: in the result every backslash starts an escape, and the text
    ``\\x1b`` (four characters) shows as ``\\\\x1b``, never as ESC's escape.
    Everything else, non-ASCII letters included, is left as it is.

    Not idempotent (a backslash doubles each time): apply it once, when printing.
    """
    return _UNSAFE.sub(_escape, str(value))


def clean(value: Any) -> Any:
    """A daemon answer (dicts, lists, strings, numbers) with ``safe`` applied to every
    string in it, keys included; for human-readable output only."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def json_text(value: Any, **dumps: Any) -> str:
    """``json.dumps(value, **dumps)`` with DEL, the C1 controls and lone surrogates also
    written as ``\\uXXXX`` escapes.

    ``json.dumps`` escapes the C0 controls, but leaves DEL raw, and with
    ``ensure_ascii=False`` the C1 controls too (U+009B, CSI). Outside strings
    JSON text is ASCII, so these can only stand inside strings, where the escape
    means the same character: the output decodes to the same value.
    """
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, **dumps))

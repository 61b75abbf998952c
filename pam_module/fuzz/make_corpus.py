"""Write the seed corpus of fuzz_relay.c into pam_module/fuzz/corpus/.

    python3 pam_module/fuzz/make_corpus.py

Each seed is one input in the harness's layout (see fuzz_relay.c): a flags
byte, the answers section's length and the answers (each ending in '\\n'), then
the daemon's byte stream. The conversations follow docs/protocol.md: a normal
login, wrong codes, enrolment at login, every outcome and message type, and
the broken daemons of the fail-closed matrix. The files are committed; rerun
this only to change them.
"""

from __future__ import annotations

import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

# The harness's flag bits (fuzz_relay.c, F_*).
CLOSE, SILENT, FAIL_OPEN, DEBUG, TEXT_FAIL, BAD_ARGS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x80


def long_answer(extra: int) -> int:
    """F_LONG: the first prompt is answered with 65534 + extra bytes (extra 1..3)."""
    return extra << 5


PROMPT = "Verification code: "
WRONG = "Incorrect verification code."
QR = "\n".join(["█▀▀▀▀▀█ ▄▀▄ █▀▀▀▀▀█", "█ ███ █ ▀▄█ █ ███ █", "▀▀▀▀▀▀▀ ▀ ▀ ▀▀▀▀▀▀▀"])
ENROL = (
    "Multi-factor authentication is now required for this account.\n"
    "Scan this QR code with your authenticator app:\n"
    f"{QR}\n"
    "otpauth://totp/pam-mfa:alice?secret=JBSWY3DPEHPK3PXP&issuer=pam-mfa\n"
    "Key: JBSW Y3DP EHPK 3PXP"
)
RECOVERY = (
    "Enrolment complete. Your recovery codes (each works once):\n  ABCDE-FGHIJ\n  KLMNO-PQRST"
)


def frame(ftype: str, payload: str | bytes = b"", length: int | None = None) -> bytes:
    """One daemon frame; `length` overrides the true length (for broken daemons)."""
    body = ftype.encode("ascii") + (payload.encode() if isinstance(payload, str) else payload)
    return struct.pack("!I", len(body) if length is None else length) + body


def seed(stream: bytes, answers: list[bytes] | None = None, flags: int = 0) -> bytes:
    section = b"".join(a + b"\n" for a in answers or [])
    assert len(section) < 256
    return bytes([flags, len(section)]) + section + stream


SEEDS: dict[str, bytes] = {
    "login-ok": seed(frame("P", PROMPT) + frame("R", "S"), [b"123456"]),
    "login-wrong-then-right": seed(
        frame("P", PROMPT) + frame("E", WRONG) + frame("P", PROMPT) + frame("R", "S"),
        [b"000000", b"123456"],
    ),
    "maxtries": seed(
        (frame("P", PROMPT) + frame("E", WRONG)) * 3
        + frame("E", "Too many failed attempts with incorrect verification code.")
        + frame("R", "M"),
        [b"000000", b"111111", b"222222"],
    ),
    "enrolment": seed(
        frame("I", ENROL)
        + frame("P", PROMPT)
        + frame("I", RECOVERY)
        + frame("p", "Press Enter once the recovery codes are saved: ")
        + frame("R", "S"),
        [b"123456", b""],
    ),
    "enrolment-recovery-null-answer": seed(
        frame("I", RECOVERY) + frame("p", "Press Enter: ") + frame("R", "S"), [b"\0"]
    ),
    "skip": seed(frame("R", "K")),
    "unavail": seed(frame("R", "U")),
    "failure": seed(frame("I", "Account locked.") + frame("R", "F")),
    "info-with-nul": seed(frame("I", b"before\0after") + frame("E", "") + frame("R", "F")),
    "prompt-timeout-peer-closes": seed(
        frame("P", PROMPT)
        + frame("E", "Correct verification code was not entered before timeout.")
        + frame("R", "F"),
        [b"123456"],
        CLOSE,
    ),
    "silent": seed(
        frame("I", "hidden") + frame("E", "hidden") + frame("P", PROMPT) + frame("R", "S"),
        [b"123456"],
        SILENT,
    ),
    "debug-and-bad-args": seed(frame("P", PROMPT) + frame("R", "S"), [b"123456"], DEBUG | BAD_ARGS),
    "fail-open-daemon-silent": seed(b"", flags=FAIL_OPEN),
    "fail-open-after-prompt": seed(frame("P", PROMPT), [b"123456"], FAIL_OPEN),
    "fail-open-eof-mid-frame": seed(struct.pack("!I", 10) + b"Iab", flags=FAIL_OPEN | CLOSE),
    "too-long-frame": seed(frame("I", b"A" * 4096, length=70000)),
    "zero-length-frame": seed(b"\0\0\0\0"),
    "unknown-type": seed(frame("Z", "what is this")),
    "answer-type-from-daemon": seed(frame("A")),
    "bad-result-byte": seed(frame("R", "X")),
    "long-result": seed(frame("R", "SS")),
    "empty-result": seed(frame("R")),
    "answer-not-utf8": seed(frame("P", PROMPT) + frame("R", "S"), [b"\xc0\x80"]),
    "answer-utf8": seed(frame("p", "Name: ") + frame("R", "S"), ["Zoë 😀".encode()]),
    "conversation-fails": seed(frame("P", PROMPT) + frame("R", "S"), [b"\x01\x12"]),
    "no-answer-left": seed(frame("P", PROMPT) + frame("P", PROMPT) + frame("R", "S"), [b"1"]),
    "text-conversation-fails": seed(frame("E", WRONG) + frame("R", "F"), flags=TEXT_FAIL),
    "answer-longest": seed(frame("P", PROMPT) + frame("R", "S"), flags=long_answer(1)),
    "answer-too-long": seed(frame("P", PROMPT) + frame("R", "S"), flags=long_answer(2)),
    "largest-frame": seed(frame("I", b"x" * 65535) + frame("R", "S")),
}


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.iterdir():
        old.unlink()
    for name, data in SEEDS.items():
        (CORPUS / name).write_bytes(data)


if __name__ == "__main__":
    main()

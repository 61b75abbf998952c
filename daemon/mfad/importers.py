"""Tokens from google-authenticator-libpam and pam_oath, read as they are, for `mfa import`.

Pure parsing of the two file formats into `Token`s (secret, kind, parameters, the
last step or counter already used, scratch codes, and notes on what mfad does
differently), and the one careful read of a user's own file. No store, no
verification: tokenops.py decides what to do with a Token, and the verifier
checks codes made from it later like any other.

A file never reaches a message: a complaint names the file and line and says
what is wrong with it, never what the line holds (it holds a secret).

google-authenticator's ``~/.google_authenticator`` (the libpam's own format):
the base32 key on the first line, then option lines starting ``" `` and
eight-digit scratch codes, one a line::

    " RATE_LIMIT 3 30 [times...]   " WINDOW_SIZE 17     " DISALLOW_REUSE [steps...]
    " TOTP_AUTH                    " HOTP_COUNTER 1     " STEP_SIZE 30
    " TIME_SKEW 2

The module reads a counter-based key's codes from HOTP_COUNTER on (the next
counter it would take; 0 or absent means time-based) and a time-based one's
within -(W-1)/2 .. W/2 steps of now for WINDOW_SIZE W; DISALLOW_REUSE lists
the time steps already used.

pam_oath's usersfile (oath-toolkit's liboath/usersfile.c), one token a line::

    TYPE USER PIN HEXSECRET [COUNTER [LAST_OTP [LAST_TIME]]]

TYPE is ``HOTP``, ``HOTP/E``, ``HOTP/E/<digits>`` (counter-based) or
``HOTP/T30``, ``HOTP/T60`` with an optional ``/<digits>`` (time-based, 6 to 8
digits); PIN is ``-`` (none), ``+`` (checked elsewhere) or the PIN itself;
after a success liboath writes the counter of the code it took, that code, and
the local time as ``%Y-%m-%dT%H:%M:%SL``. So a line with a last code has used
its counter, and a line without one has not used it yet.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfad.errors import RequestError
from mfad.model import Kind, TokenParams

MAX_FILE = 64 * 1024
"""Bytes read of a user's file: a real one is a few hundred."""
MIN_SECRET = 10
"""Bytes a key must have (80 bits, google-authenticator's own length; RFC 4226 asks 128)."""
DEFAULT_GA_PATH = "~/.google_authenticator"


class ImportFileError(RequestError):
    """A file that is not what it should be: its line (if any) and the problem, no content."""


class NoFile(ImportFileError):
    """There is no file at the path: with ``--all``, a user who never set one up."""


@dataclass(frozen=True, slots=True)
class Token:
    user: str
    secret: bytes
    params: TokenParams
    last: int | None  # the last time step or counter already used; None: none
    scratch: tuple[str, ...] = ()  # single-use codes that become recovery codes
    notes: tuple[str, ...] = ()  # what mfad does differently from the old module
    line: int = 0  # where it came from (usersfile)


@dataclass(slots=True)
class _Options:
    window: int | None = None
    hotp_counter: int | None = None
    used_steps: list[int] = field(default_factory=list)
    disallow_reuse: bool = False
    rate_limit: str | None = None
    step: int = 30
    skew: int | None = None
    unknown: list[str] = field(default_factory=list)


def _b32(text: str) -> bytes:
    cleaned = "".join(text.split()).replace("-", "").upper()
    if not cleaned or not cleaned.isascii():
        raise ValueError("not base32")
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def decode_key(text: str, encoding: str) -> bytes:
    """A key typed or pasted by an administrator, in base32 (apps) or hex (token seed files)."""
    try:
        key = bytes.fromhex("".join(text.split())) if encoding == "hex" else _b32(text)
    except (ValueError, binascii.Error):
        raise ImportFileError(f"the key is not valid {encoding}") from None
    if len(key) < MIN_SECRET:
        raise ImportFileError(f"the key is {len(key) * 8} bits; at least {MIN_SECRET * 8} needed")
    return key


def _int_option(where: str, name: str, args: list[str], lo: int, hi: int) -> int:
    if not args or not args[0].isdigit() or not lo <= int(args[0]) <= hi:
        raise ImportFileError(f"{where}: {name} needs a number from {lo} to {hi}")
    return int(args[0])


def parse_google_authenticator(
    text: str, user: str, where: str, totp_window: int, look_ahead: int
) -> Token:
    """A ``~/.google_authenticator`` file as a Token for `user`; ImportFileError if malformed.

    `totp_window` and `look_ahead` are mfad's, for the notes on what changes."""
    lines = text.splitlines()
    if not lines:
        raise ImportFileError(f"{where}: empty")
    try:
        secret = _b32(lines[0])
    except (ValueError, binascii.Error):
        raise ImportFileError(f"{where} line 1: not a base32 key") from None
    if len(secret) < MIN_SECRET:
        raise ImportFileError(f"{where} line 1: the key is shorter than {MIN_SECRET * 8} bits")
    opts, scratch = _Options(), []
    for number, raw in enumerate(lines[1:], start=2):
        at = f"{where} line {number}"
        line = raw.strip()
        if not line:
            continue
        if re.fullmatch(r"\d{8}", line):
            scratch.append(line)
            continue
        if not raw.startswith('" '):
            raise ImportFileError(f"{at}: neither an option nor an eight-digit scratch code")
        name, *args = raw[2:].split()
        if any(not a.isdigit() for a in args):
            raise ImportFileError(f"{at}: {name} takes numbers only")
        if name == "WINDOW_SIZE":
            opts.window = _int_option(at, name, args, 1, 100)
        elif name == "HOTP_COUNTER":
            opts.hotp_counter = _int_option(at, name, args, 0, 2**62)
        elif name == "STEP_SIZE":
            opts.step = _int_option(at, name, args, 1, 60)
        elif name == "DISALLOW_REUSE":
            opts.disallow_reuse = True
            opts.used_steps = [int(a) for a in args]
        elif name == "RATE_LIMIT":
            if len(args) < 2:
                raise ImportFileError(f"{at}: RATE_LIMIT needs a count and seconds")
            opts.rate_limit = f"{args[0]} logins per {args[1]} s"
        elif name == "TIME_SKEW":
            opts.skew = int(args[0]) if args else 0
        elif name != "TOTP_AUTH":
            opts.unknown.append(name[:40])
    return _ga_token(user, secret, opts, tuple(scratch), totp_window, look_ahead)


def _ga_token(
    user: str,
    secret: bytes,
    opts: _Options,
    scratch: tuple[str, ...],
    totp_window: int,
    look_ahead: int,
) -> Token:
    notes = []
    window = 3 if opts.window is None else opts.window
    if opts.hotp_counter:  # the libpam's test: a counter of 0 (or none) is time-based
        params = TokenParams("SHA1", 6, 30, Kind.HOTP)
        last: int | None = opts.hotp_counter - 1 if opts.hotp_counter > 1 else None
        if window != look_ahead:
            notes.append(
                f"window: the file looked {window} codes ahead; mfad looks {look_ahead} "
                "ahead for every HOTP token (hotp.look_ahead)"
            )
    else:
        params = TokenParams("SHA1", 6, opts.step, Kind.TOTP)
        last = max(opts.used_steps) if opts.used_steps else None
        early, late = (window - 1) // 2, window // 2
        if (early, late) != (totp_window, totp_window):
            notes.append(
                f"window: the file took codes from {early} steps before to {late} after "
                f"now; mfad takes {totp_window} either side for everyone (totp.window)"
            )
        if not opts.disallow_reuse:
            notes.append("reuse: the file allowed a code twice; mfad never accepts one twice")
        if opts.skew:
            notes.append(
                f"time skew: the file corrected the phone's clock by {opts.skew} steps; mfad "
                "does not (a phone that far off fails; `mfa show` reports its offset)"
            )
    if opts.rate_limit:
        notes.append(
            f"rate limit: the file allowed {opts.rate_limit}; mfad's lockout and "
            "back-off apply instead (lockout.*)"
        )
    if scratch:
        notes.append(
            f"{len(scratch)} scratch codes kept as recovery codes (8 digits, weaker than "
            "mfad's): make a new set with `mfa recovery-codes USER --regenerate`"
        )
    notes += [f"unknown option {name} ignored" for name in opts.unknown]
    return Token(user, secret, params, last, scratch, tuple(notes))


_OATH_TYPE = re.compile(r"HOTP(?:/E(?:/(?P<ed>[678]))?|/T(?P<step>30|60)(?:/(?P<td>[678]))?)?")
_OATH_TIME = "%Y-%m-%dT%H:%M:%SL"


def parse_oath_usersfile(text: str, where: str, totp_window: int) -> list[Token]:
    """Every token line of a pam_oath usersfile, in order; ImportFileError naming the first
    malformed line, so that nothing of a broken file is imported. Blank lines and lines
    starting with # are skipped. The user names are as written (resolved by the caller)."""
    tokens = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        at = f"{where} line {number}"
        kind = _OATH_TYPE.fullmatch(fields[0])
        if kind is None:
            raise ImportFileError(f"{at}: unknown token type (HOTP, HOTP/E/8, HOTP/T30/6, ...)")
        if len(fields) < 4 or len(fields) > 7:
            raise ImportFileError(
                f"{at}: expected TYPE USER PIN HEXSECRET [COUNTER [LAST_OTP [LAST_TIME]]]"
            )
        user, pin, key = fields[1:4]
        try:
            secret = bytes.fromhex(key)
        except ValueError:
            raise ImportFileError(f"{at}: the secret is not hexadecimal") from None
        if len(secret) < MIN_SECRET:
            raise ImportFileError(f"{at}: the secret is shorter than {MIN_SECRET * 8} bits")
        counter = _number(fields, 4, at, "COUNTER")
        last_otp = fields[5] if len(fields) > 5 else None
        if last_otp is not None and not last_otp.isdigit():
            raise ImportFileError(f"{at}: the last one-time password is not digits")
        used_at = _time(fields[6], at) if len(fields) > 6 else None
        digits = int(kind["ed"] or kind["td"] or 6)
        notes = []
        if pin not in ("-", "+"):
            notes.append(
                "PIN: the line had a PIN, which mfad does not ask for (the password "
                "is checked by the module before pam_mfa)"
            )
        if kind["step"]:
            period = int(kind["step"])
            params = TokenParams("SHA1", digits, period, Kind.TOTP)
            # the step of the last success, and as many after as the window takes: the
            # code used then may have been a later step's, and must stay used
            last = None if used_at is None else int(used_at // period) + totp_window
        else:
            params = TokenParams("SHA1", digits, 30, Kind.HOTP)
            # liboath wrote the counter of the code it took; without a code, none was taken
            last = counter if last_otp is not None else (counter - 1 if counter else None)
        tokens.append(Token(user, secret, params, last, (), tuple(notes), number))
    return tokens


def _number(fields: list[str], index: int, at: str, name: str) -> int:
    if len(fields) <= index:
        return 0
    if not fields[index].isdigit() or int(fields[index]) >= 2**62:
        raise ImportFileError(f"{at}: {name} is not a whole number")
    return int(fields[index])


def _time(text: str, at: str) -> float:
    try:
        parsed = time.strptime(text, _OATH_TIME)
    except ValueError:
        raise ImportFileError(f"{at}: the time is not like 2024-01-31T12:00:00L") from None
    # liboath writes local time; mktime reads it back as the daemon's local time
    return time.mktime(parsed)


def expand(pattern: str, user: str, home: str) -> Path:
    """google-authenticator's secret= syntax: ``~`` first, ``${HOME}``, ``${USER}``."""
    if pattern.startswith("~/"):
        pattern = home.rstrip("/") + pattern[1:]
    path = pattern.replace("${HOME}", home).replace("${USER}", user)
    if not path.startswith("/") or "\0" in path:
        raise ImportFileError(
            "the path must be absolute, or start with ~/ (${HOME} and ${USER} are replaced)"
        )
    return Path(path)


def read_owned(path: Path, uid: int) -> str:
    """The text of `path`, which must be a regular file owned by `uid` (not a symbolic
    link, nor writable by group or others), as google-authenticator's module demands.

    Read as root, so every user's file is readable; O_NOFOLLOW refuses a link in the last
    component. The path is first opened with O_PATH, which reads nothing and opens no
    device (a FIFO, a tape or a watchdog named as the path is never opened for real), and
    the checks run on that descriptor; only a regular file that passes them is reopened,
    through the descriptor itself, so it cannot be swapped between check and read."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reasons = {
            errno.ELOOP: "is a symbolic link",
            errno.ENOENT: "does not exist",
            errno.EACCES: "cannot be read",
        }
        why = reasons.get(exc.errno or 0) or f"cannot be opened: {exc.strerror}"
        kind = NoFile if exc.errno == errno.ENOENT else ImportFileError
        raise kind(f"{path} {why}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):  # O_PATH with O_NOFOLLOW opens the link itself
            raise ImportFileError(f"{path} is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise ImportFileError(f"{path} is not a regular file")
        if st.st_uid != uid:
            raise ImportFileError(f"{path} is owned by uid {st.st_uid}, not the user")
        if st.st_mode & 0o022:
            raise ImportFileError(f"{path} is writable by group or others")
        if st.st_size > MAX_FILE:
            raise ImportFileError(f"{path} is larger than {MAX_FILE} bytes")
        opened = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            again = os.fstat(opened)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                raise ImportFileError(f"{path} changed while it was read")
            data = os.read(opened, MAX_FILE + 1)
        finally:
            os.close(opened)
    finally:
        os.close(fd)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ImportFileError(f"{path} is not a text file of this format") from None

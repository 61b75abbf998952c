"""Forward-secure sealing of the audit trail: an epoch key that evolves one way.

The idea is systemd-journald's Forward Secure Sealing, with a plain hash chain
of keys instead of its FSPRG (the verifier here holds the seed anyway):

* ``mfa audit seal-init`` draws ``k0`` from the kernel (32 bytes) and fixes the
  sealing's start time and epoch length. ``k0``, the start and the length,
  written as one printable string (the *verification key*, ``VerificationKey``),
  go to the security team once and are never stored on the host.
* The key of epoch ``i + 1`` is ``HMAC-SHA256(k_i, "mfad-evolve")``: anyone with
  ``k_i`` gets every later key, nobody gets an earlier one from it.
* Every record carries the epoch its own time falls in and
  ``mac = HMAC-SHA256(k_epoch, the record's line without the mac)``; that line
  holds ``seq`` and ``prev`` too, so a MAC pins the whole chain before it.
* When an epoch ends (a timer, or the first record after it) mfad writes an
  ``audit_sealed`` record with the ending epoch's key, then evolves the key and
  replaces the key file: the host keeps only the current epoch's key (0600).

The verifier derives ``k_epoch`` from ``k0`` for the epoch the record's *time*
says, and checks that the claimed epoch is that one: a record must verify with
its own epoch's key only. journald's CVE-2023-31439 was a verifier that took
an older entry sealed with a newer key; here a key copied at epoch N makes
records that claim epoch N or later, and those are refused wherever they stand
before a record of an earlier epoch, or anywhere their time says an earlier one.

What this does not protect: root at time T holds the key of T's epoch, so it can
stop logging, and write new records (or rewrite those of T's own epoch) that
verify. Records whose epoch ended before T cannot be changed, removed or
added to without the verifier naming the place.

Key file format, one line: ``mfad-seal-v1 EPOCH START LENGTH KEYHEX CHECK``,
CHECK the first 16 hex digits of SHA-256 of what comes before it, so a torn
write is recognised. It is replaced by writing a temporary file, overwriting
the old key's bytes in place, then renaming: a crash at any instant leaves a
valid file holding the newest key that reached the disk.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

KEY_BYTES = 32
EVOLVE_LABEL = b"mfad-evolve"
MAC_FIELD = b',"mac":"'
MAC_HEX = 64
_FILE_MAGIC = "mfad-seal-v1"
_VK_PREFIX = "mfadvk1-"
_EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=UTC)


class SealError(Exception):
    """A verification key or a sealing key file that cannot be used (says why)."""


def evolve(key: bytes) -> bytes:
    """The next epoch's key: one way, so the past cannot be derived from the present."""
    return hmac.new(key, EVOLVE_LABEL, hashlib.sha256).digest()


def mac(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def split_mac(raw: bytes) -> tuple[bytes, str] | None:
    """(the line as it was MACed, the MAC) of a sealed record's line; None if unsealed.

    The writer renders a record with ``mac`` as its last member, so the MACed
    bytes are the line with that member taken out, byte for byte: no JSON is
    re-encoded to check a record.
    """
    tail = len(MAC_FIELD) + MAC_HEX + 2  # ,"mac":"<64 hex>"}
    if len(raw) < tail + 1 or not raw.endswith(b'"}'):
        return None
    start = len(raw) - tail
    if raw[start : start + len(MAC_FIELD)] != MAC_FIELD:
        return None
    return raw[:start] + b"}", raw[start + len(MAC_FIELD) : -2].decode("ascii", "replace")


def with_mac(canonical: str, key: bytes) -> str:
    """The line for a record rendered (as `canonical`, ending in ``}``) without its MAC."""
    tag = mac(key, canonical.encode("utf-8"))
    return f'{canonical[:-1]},"mac":"{tag}"}}'


def micros(moment: datetime) -> int:
    """Microseconds since 1970 of an aware time, exactly (no float rounding)."""
    delta = moment - _EPOCH_ZERO
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def time_text(us: int) -> str:
    """A record's ``time``: RFC 3339 UTC with microseconds, from microseconds since 1970."""
    moment = datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Epochs:
    """The sealing's clock: epoch 0 starts at `start` (whole seconds), each `length` long."""

    start: int
    length: int

    def of(self, us: int) -> int:
        """The epoch of a time in microseconds; negative before the sealing started."""
        return (us - self.start * 1_000_000) // (self.length * 1_000_000)

    def begins(self, epoch: int) -> int:
        """Microseconds since 1970 at which `epoch` begins."""
        return (self.start + epoch * self.length) * 1_000_000


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """``k0`` with the sealing's start and epoch length: verifies (and could forge) every epoch.

    Text form: ``mfadvk1-`` then base32 of k0 (32 bytes), start and length (8 bytes
    each, big-endian) and 4 check bytes (SHA-256 of the rest), in groups of 8.
    """

    k0: bytes
    epochs: Epochs

    def text(self) -> str:
        body = (
            self.k0 + self.epochs.start.to_bytes(8, "big") + self.epochs.length.to_bytes(8, "big")
        )
        data = body + hashlib.sha256(body).digest()[:4]
        b32 = base64.b32encode(data).decode("ascii").rstrip("=")
        return _VK_PREFIX + "-".join(b32[i : i + 8] for i in range(0, len(b32), 8))

    @classmethod
    def parse(cls, text: str) -> VerificationKey:
        cleaned = "".join(text.split())
        if not cleaned.lower().startswith(_VK_PREFIX):
            raise SealError(f"a verification key starts with {_VK_PREFIX!r}")
        b32 = cleaned[len(_VK_PREFIX) :].replace("-", "").upper()
        try:
            data = base64.b32decode(b32 + "=" * (-len(b32) % 8))
        except ValueError:
            raise SealError("the verification key has characters base32 does not use") from None
        body, check = data[:-4], data[-4:]
        if len(body) != KEY_BYTES + 16 or not hmac.compare_digest(
            hashlib.sha256(body).digest()[:4], check
        ):
            raise SealError("the verification key is mistyped or cut short (its check fails)")
        start = int.from_bytes(body[KEY_BYTES : KEY_BYTES + 8], "big")
        length = int.from_bytes(body[KEY_BYTES + 8 :], "big")
        if length < 1:
            raise SealError("the verification key names an epoch length of 0")
        return cls(body[:KEY_BYTES], Epochs(start, length))

    def key_at(self, epoch: int) -> bytes:
        key = self.k0
        for _ in range(epoch):
            key = evolve(key)
        return key


class KeyChain:
    """A verifier's keys, derived forward from k0 and cached as the walk goes on."""

    def __init__(self, vk: VerificationKey) -> None:
        self.vk = vk
        self._epoch, self._key = 0, vk.k0

    def key(self, epoch: int) -> bytes:
        if epoch < self._epoch:  # rare: a bad record makes the walk stop anyway
            return self.vk.key_at(epoch)
        while self._epoch < epoch:
            self._key, self._epoch = evolve(self._key), self._epoch + 1
        return self._key


@dataclass(slots=True)
class SealState:
    """What the host holds: the current epoch's key, never an earlier one."""

    epoch: int
    epochs: Epochs
    key: bytes

    def advance(self, epoch: int) -> None:
        """Evolve in memory to `epoch` (the key file is replaced by `store`)."""
        while self.epoch < epoch:
            self.key, self.epoch = evolve(self.key), self.epoch + 1

    def line(self) -> str:
        body = (
            f"{_FILE_MAGIC} {self.epoch} {self.epochs.start} {self.epochs.length} {self.key.hex()}"
        )
        return f"{body} {hashlib.sha256(body.encode()).hexdigest()[:16]}\n"


def start_sealing(now_us: int, length: int) -> tuple[SealState, VerificationKey]:
    """A new sealing from now: the host's state at epoch 0 and the key that verifies it."""
    k0 = secrets.token_bytes(KEY_BYTES)
    epochs = Epochs(now_us // 1_000_000, length)
    return SealState(0, epochs, k0), VerificationKey(k0, epochs)


def _parse_state(text: str) -> SealState | None:
    parts = text.split()
    if len(parts) != 6 or parts[0] != _FILE_MAGIC:
        return None
    body = " ".join(parts[:5])
    if not hmac.compare_digest(hashlib.sha256(body.encode()).hexdigest()[:16], parts[5]):
        return None
    try:
        epoch, start, length, key = (
            int(parts[1]),
            int(parts[2]),
            int(parts[3]),
            bytes.fromhex(parts[4]),
        )
    except ValueError:
        return None
    if epoch < 0 or length < 1 or len(key) != KEY_BYTES:
        return None
    return SealState(epoch, Epochs(start, length), key)


def _temp(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def load(path: Path) -> SealState | None:
    """The sealing state on disk, None if sealing was never set up.

    A crash while replacing the file leaves the old file, the new one beside it,
    or both; the newest valid one wins. A file present but unusable is refused:
    mfad must not quietly go on unsealed.
    """
    found: list[SealState] = []
    present = False
    for candidate in (path, _temp(path)):
        try:
            text = candidate.read_text(encoding="ascii")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise SealError(f"cannot read the audit sealing key {candidate}: {exc}") from exc
        present = True
        state = _parse_state(text)
        if state is not None:
            found.append(state)
    if not found:
        if present:
            raise SealError(
                f"{path} is not an audit sealing key (damaged?); run `mfa audit seal-init "
                "--force` to start a new sealing, and give the security team the new key"
            )
        return None
    return max(found, key=lambda s: s.epoch)


def store(path: Path, state: SealState) -> None:
    """Replace the key file with `state`, erasing the old key's bytes; crash-safe.

    Blocking (fsync): call it from a thread, never on the event loop.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = state.line().encode("ascii")
    temp = _temp(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    # Overwrite the old key where it lies (the same length: one sector), so the
    # rename below does not leave it in a freed block for an intruder to find.
    with contextlib.suppress(FileNotFoundError):
        old = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.fstat(old).st_size == len(data):
                os.pwrite(old, data, 0)
            else:
                os.ftruncate(old, 0)
            os.fsync(old)
        finally:
            os.close(old)
    os.rename(temp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove(path: Path) -> None:
    """Erase and unlink the key file (a seal-init that could not be recorded)."""
    for candidate in (path, _temp(path)):
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(candidate, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.pwrite(fd, b"\0" * os.fstat(fd).st_size, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            candidate.unlink()

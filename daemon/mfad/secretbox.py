"""Encryption of TOTP secrets at rest: AES-256-GCM with a key file under /etc/mfad.

Each sealed secret is bound to its user name as associated data, so a row copied
onto another user in the database does not decrypt: an attacker with write
access to the store alone cannot give themselves someone else's token.

Sealed blob layout: version byte (1) | 12-byte nonce | ciphertext and 16-byte tag.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mfad.errors import KeyFileError, StoreError

_VERSION = b"\x01"
_NONCE = 12
_AAD_PREFIX = b"pam-mfa/totp/v1\x00"


def generate_key_file(path: Path) -> None:
    """Create a new 256-bit key file, mode 0600; never overwrite an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists; refusing to replace a secret key") from exc
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)


class SecretBox:
    """Seals and opens per-user secrets with one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        # a separate key for digests, so no value is ever both encrypted and MACed with one key
        self._mac_key = hmac.new(key, b"pam-mfa/recovery/v1", hashlib.sha256).digest()

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the key, refusing a file that others could read or replace."""
        try:
            st = path.stat()
            raw = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(
                f"cannot read the secret key {path}: {exc.strerror}; "
                f"create one with `mfad --generate-key {path}`"
            ) from exc
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyFileError(
                f"{path} must be owned by the daemon's user and mode 0600 "
                f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except ValueError as exc:
            raise KeyFileError(f"{path} is not a base64 key") from exc
        if len(key) != 32:
            raise KeyFileError(f"{path} holds a {len(key) * 8}-bit key; a 256-bit key is needed")
        return cls(key)

    def check_value(self) -> bytes:
        """A value that names this key without revealing it: kept in the store, it lets
        mfad refuse to start with a different key file instead of failing every login."""
        return hmac.new(self._mac_key, b"pam-mfa/key-check/v1", hashlib.sha256).digest()[:16]

    def seal(self, user: str, secret: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret, _AAD_PREFIX + user.encode())

    def digest(self, user: str, code: str) -> bytes:
        """Keyed digest of a recovery code, bound to its user."""
        return hmac.new(self._mac_key, f"{user}\0{code}".encode(), hashlib.sha256).digest()

    def open(self, user: str, blob: bytes) -> bytes:
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise StoreError(f"the stored secret of {user!r} is malformed")
        nonce, ciphertext = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        try:
            return self._aead.decrypt(nonce, ciphertext, _AAD_PREFIX + user.encode())
        except InvalidTag as exc:
            raise StoreError(
                f"the stored secret of {user!r} does not decrypt with this key "
                "(wrong key file, or the row was altered)"
            ) from exc

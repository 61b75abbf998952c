"""The store the config names, opened, brought up to date and checked against the key.

For the daemon at start and for `mfad migrate-store`: one way to open a store.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from mfad import config
from mfad.errors import KeyFileError, StoreError
from mfad.secretbox import SecretBox
from mfad.store import SqliteStore, Store


async def open_store(cfg: config.Config) -> Store:
    """The configured backend, connected and migrated; StoreError if it cannot be."""
    if cfg.store_backend == "postgresql":
        # imported here: a host on SQLite never loads the PostgreSQL driver
        from psycopg.conninfo import make_conninfo

        from mfad.pgstore import PostgresStore

        dsn = cfg.store_dsn
        if cfg.store_password_file is not None:
            dsn = make_conninfo(dsn, password=_read_password(cfg.store_password_file))
        return await PostgresStore.open(dsn)
    return await SqliteStore.open(cfg.store_path)


def _read_password(path: Path) -> str:
    """The database password, from a file only root can read (like the key file)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read store.password_file {path}: {exc}") from exc
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise StoreError(
            f"{path} (store.password_file) must be owned by the daemon's user and mode 0600 "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )
    return text.strip("\n")


async def check_key(store: Store, box: SecretBox, key_file: Path) -> None:
    """Refuse a key file that is not the one the store's secrets were sealed with.

    The store keeps the key's check value from the first start; a store from before
    check values is tested by opening one sealed secret, then given one.
    """
    stored = await store.get_key_check()
    if stored is None:  # a store from before check values: does the key open its secrets?
        sample = await store.any_sealed_secret()
        if sample is not None:
            try:
                box.open(*sample)
            except StoreError:
                raise KeyFileError(_wrong_key(key_file)) from None
        await store.set_key_check(box.check_value())
    elif not hmac.compare_digest(stored, box.check_value()):
        raise KeyFileError(_wrong_key(key_file))


def _wrong_key(key_file: Path) -> str:
    return (
        f"{key_file} is not the key this store's secrets were sealed with; restore the "
        "original key file (mfad would otherwise refuse every login and count every "
        "recovery code as wrong)"
    )

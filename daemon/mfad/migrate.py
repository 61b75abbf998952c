"""`mfad migrate-store`: move every account, lock and history to the fleet's store.

From the SQLite file this host used to the PostgreSQL database its config now
names, with no re-enrolment: the secrets move still sealed (the key file is the
same on every host), recovery codes as their digests, the lockout counters and
blocks, the login history and the key check value. It copies one snapshot of
the source in one transaction on the target, so a failure leaves the target as
it was. The audit trail is not a table of the store: each host keeps its file,
and its records reach the fleet's table when its daemon next starts.
"""

from __future__ import annotations

import hmac
import socket
from pathlib import Path

from mfad import config
from mfad.backends import check_key, open_store
from mfad.errors import KeyFileError, StoreError
from mfad.secretbox import SecretBox
from mfad.store import SqliteStore, Store


async def migrate_store(cfg: config.Config, source: Path, *, replace: bool) -> dict[str, int]:
    """Copy the SQLite store at `source` into the configured PostgreSQL store; the number
    of rows copied, by table. StoreError or KeyFileError, and nothing written, if it
    cannot be done."""
    if cfg.store_backend != "postgresql":
        raise StoreError(
            "migrate-store copies into the store the config names: set store.backend: "
            "postgresql and store.dsn first"
        )
    if not source.is_file():
        raise StoreError(f"no SQLite store at {source} (name it with --from)")
    if _daemon_running(cfg.control_socket):
        raise StoreError(
            f"mfad is running ({cfg.control_socket} answers): stop it first "
            "(systemctl stop mfad), or logins after the copy would be lost"
        )
    box = SecretBox.from_file(cfg.key_file)
    old = await SqliteStore.open(source)
    try:
        await check_key(old, box, cfg.key_file)  # the key opens what is to be copied
        rows = await old.export_rows()
    finally:
        await old.close()
    new: Store = await open_store(cfg)
    try:
        theirs = await new.get_key_check()
        if theirs is not None and not hmac.compare_digest(theirs, box.check_value()):
            raise KeyFileError(
                f"the target store was set up with another key file than {cfg.key_file}; "
                "every host of a fleet needs the same key file"
            )
        await new.import_rows(rows, replace=replace)
    finally:
        await new.close()
    return {table: len(found) for table, found in rows.items()}


def _daemon_running(control_socket: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(control_socket))
        except OSError:
            return False
    return True

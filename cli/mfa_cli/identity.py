"""Who is running `mfa`: the account a command acts on when none is named."""

from __future__ import annotations

import os
import pwd

from mfa_cli.errors import CliError


def invoking_user() -> str:
    """The name of this process's real uid, as the daemon will see it (SO_PEERCRED)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise CliError(f"uid {uid} has no user name; name the user explicitly") from None


def is_root() -> bool:
    return os.getuid() == 0

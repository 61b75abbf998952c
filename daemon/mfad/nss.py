"""Users and groups as the system's NSS sources see them (files, LDAP, SSSD, AD alike).

These calls may block on a directory server: callers run them in a thread.
"""

from __future__ import annotations

import grp
import os
import pwd


def groups_of(user: str) -> frozenset[str]:
    """The names of every group `user` is in, primary included; empty for an unknown user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return frozenset()
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def group_members(group: str) -> list[str] | None:
    """Members of `group`, by supplementary and primary membership; None if no such group."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return None
    members = set(entry.gr_mem)
    members.update(p.pw_name for p in pwd.getpwall() if p.pw_gid == entry.gr_gid)
    return sorted(members)

"""A case-insensitive name service for tests, like SSSD or AD: nss_wrapper plus tests/nss_ci.c.

A process started with `NssCi.env` in its environment resolves users the way a
machine joined to a directory does: ``getpwnam("ALICE")`` and
``getpwnam("Alice")`` both answer ``alice`` (the directory's canonical
spelling) with alice's uid, while the machine's own users (root, and any
throwaway user a test creates with useradd) still resolve, case-sensitively,
from /etc/passwd. Only processes given the environment see the directory
users; the test process itself does not.

How a test uses it::

    from nsswrap import nss_ci_fixture  # noqa: F401  (provides the `nss_ci` fixture)

    def test_something(ci_daemon: Daemon, nss_ci: NssCi) -> None:  # import both fixtures
        ...  # a request for "ALICE" reaches a daemon whose NSS says "alice"
        nss_ci.set_users([CiUser("alice", 200777, 200001)])  # re-created, new uid

or, outside a fixture, ``nss_ci_env(directory, users, groups)``.

How it works. ``LD_PRELOAD=libnss_wrapper.so`` (Debian's libnss-wrapper)
replaces getpwnam/getpwuid/getpwent, getgrnam/getgrgid/getgrent and
getgrouplist (and their _r forms) in the process. nss_wrapper 1.1.12, as
checked on Debian 12:

* it is on only when both NSS_WRAPPER_PASSWD and NSS_WRAPPER_GROUP are set
  (non-empty); otherwise every call, module included, goes to glibc as usual;
* when on, it never falls back to glibc's NSS (nsswitch.conf): it asks its
  "files" backend (the NSS_WRAPPER_PASSWD / NSS_WRAPPER_GROUP files) first
  and then the module named by NSS_WRAPPER_MODULE_SO_PATH, whose functions are
  ``_nss_<NSS_WRAPPER_MODULE_FN_PREFIX>_getpwnam_r`` and so on; the first
  answer wins. So NSS_WRAPPER_PASSWD is /etc/passwd itself (the machine's
  users, re-read when useradd/userdel replace it), and the module is the
  "directory";
* the files backend matches names exactly (strcmp): ``getpwnam("ROOT")``
  finds nothing there and goes on to the module. A directory user whose name
  equals a local one in another case would therefore shadow it under that
  spelling; `nss_ci_env` refuses such users (and clashing uids and groups);
* group functions of the module are optional: nss_wrapper skips missing
  ones (a warning only at NSS_WRAPPER_DEBUGLEVEL>=1). tests/nss_ci.c serves
  only passwd; groups come from the NSS_WRAPPER_GROUP file, which is a copy of
  /etc/group as it was when `nss_ci_env` ran plus the directory's groups, so
  a group useradd creates later is not in it (create throwaway users first);
* nss_wrapper's getgrouplist matches member names exactly (strcmp), unlike
  SSSD: ``os.getgrouplist("ALICE", gid)`` finds only `gid`. Code under test
  must ask with the canonical name, as it should anyway;
* nss_wrapper hands the module's getpwent a fixed 1000-byte buffer: an entry
  longer than that (a huge gecos) ends getpwall() early; keep entries short.

The module reads $NSS_CI_PASSWD on every lookup (no cache), so `set_users`
changes the directory for running processes at once. The .so is built once
per source version into tests/build, like tests/pamdriver.c.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Daemon, running_daemon
from pamtest import build_c

NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"
MODULE_SOURCE = Path(__file__).with_name("nss_ci.c")
PREFIX = "ci"  # the module's functions are _nss_ci_*


@dataclass(frozen=True)
class CiUser:
    """A directory user; `name` is the canonical spelling NSS answers with."""

    name: str
    uid: int
    gid: int
    gecos: str = ""
    home: str = "/nonexistent"
    shell: str = "/usr/sbin/nologin"

    def line(self) -> str:
        return f"{self.name}:x:{self.uid}:{self.gid}:{self.gecos}:{self.home}:{self.shell}\n"


@dataclass(frozen=True)
class CiGroup:
    name: str
    gid: int
    members: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.name}:x:{self.gid}:{','.join(self.members)}\n"


# uids/gids far above the machine's own (UID_MAX is 60000), as SSSD's id ranges are
ALICE = CiUser("alice", 200001, 200001, "Alice Example")
CAROL = CiUser("Carol", 200002, 200002, "Carol, canonically capitalised")
CI_GROUP = CiGroup("mfa-ci", 200100, ("alice", "Carol"))
DEFAULT_USERS = (ALICE, CAROL)
DEFAULT_GROUPS = (CiGroup("alice", 200001), CiGroup("Carol", 200002), CI_GROUP)


def build_module() -> Path:
    """Compile tests/nss_ci.c once per source version (concurrent callers are safe)."""
    return build_c(MODULE_SOURCE, shared=True)


@dataclass
class NssCi:
    """The files of one directory and the environment that makes a process use it."""

    directory: Path
    passwd_path: Path  # the module's users ($NSS_CI_PASSWD)
    group_path: Path  # NSS_WRAPPER_GROUP: /etc/group's groups, then the directory's
    env: dict[str, str] = field(default_factory=dict)

    def set_users(self, users: Sequence[CiUser]) -> None:
        """Replace the directory's users; running processes see the change at once."""
        _check_users(users)
        _write(self.passwd_path, "".join(u.line() for u in users))


def _check_users(users: Sequence[CiUser]) -> None:
    local = {p.pw_name.casefold(): p.pw_name for p in pwd.getpwall()}
    local_uids = {p.pw_uid for p in pwd.getpwall()}
    for user in users:
        if user.name.casefold() in local:
            raise ValueError(
                f"{user.name!r} clashes with the local user {local[user.name.casefold()]!r}"
            )
        if user.uid in local_uids:
            raise ValueError(f"uid {user.uid} of {user.name!r} is a local user's")


def _write(path: Path, text: str) -> None:
    """Replace `path` whole (a reader never sees half a file), readable by every uid."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def nss_ci_env(
    directory: Path,
    users: Sequence[CiUser] = DEFAULT_USERS,
    groups: Sequence[CiGroup] = DEFAULT_GROUPS,
) -> NssCi:
    """Write the directory's files under `directory` and return them with the environment.

    The environment holds only the variables to add (merge it into os.environ,
    as `Daemon.start(env=...)` does); an LD_PRELOAD already in os.environ is kept,
    after nss_wrapper.
    """
    _check_users(users)
    local_groups = grp.getgrall()
    names = {g.gr_name.casefold() for g in local_groups}
    gids = {g.gr_gid for g in local_groups}
    for group in groups:
        if group.name.casefold() in names or group.gid in gids:
            raise ValueError(f"group {group.name!r} ({group.gid}) clashes with a local group")
    module = build_module()
    ci = NssCi(directory, directory / "ci_passwd", directory / "group")
    ci.set_users(users)
    local = Path("/etc/group").read_text()
    local += "" if local.endswith("\n") or not local else "\n"
    _write(ci.group_path, local + "".join(g.line() for g in groups))
    preload = " ".join(p for p in (NSS_WRAPPER, os.environ.get("LD_PRELOAD", "")) if p)
    ci.env = {
        "LD_PRELOAD": preload,
        "NSS_WRAPPER_PASSWD": "/etc/passwd",
        "NSS_WRAPPER_GROUP": str(ci.group_path),
        "NSS_WRAPPER_MODULE_SO_PATH": str(module),
        "NSS_WRAPPER_MODULE_FN_PREFIX": PREFIX,
        "NSS_CI_PASSWD": str(ci.passwd_path),
    }
    return ci


@pytest.fixture(name="nss_ci")
def nss_ci_fixture() -> Iterator[NssCi]:
    """The default directory (alice, Carol, group mfa-ci) in a world-readable temp dir.

    World-readable so that a process a test runs as another uid can read it too.
    """
    directory = Path(tempfile.mkdtemp(prefix="nss-ci-"))
    directory.chmod(0o755)
    try:
        yield nss_ci_env(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(name="ci_daemon")
def ci_daemon_fixture(nss_ci: NssCi) -> Iterator[Daemon]:
    """A started mfad (conftest.running_daemon) whose name service is the harness."""
    with running_daemon(env=nss_ci.env) as daemon:
        yield daemon

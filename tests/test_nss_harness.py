"""The case-insensitive name service of tests/nsswrap.py behaves like SSSD/AD.

Each lookup runs in a child process started with the harness's environment
(nss_wrapper preloaded, tests/nss_ci.c as its module); the test process itself
sees only the machine's own users.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon
from nsswrap import (
    ALICE,
    CAROL,
    CI_GROUP,
    CiUser,
    NssCi,
    ci_daemon_fixture,  # noqa: F401  (provides the `ci_daemon` fixture)
    nss_ci_env,
    nss_ci_fixture,  # noqa: F401  (provides the `nss_ci` fixture)
)

# A child that answers lookups as JSON: {"name": [pw_name, uid] | null, ...}.
LOOKUP = """
import grp, json, os, pwd, sys
def user(fn, key):
    try:
        entry = fn(key)
    except KeyError:
        return None
    return [entry.pw_name, entry.pw_uid]
out = {}
for arg in sys.argv[1:]:
    kind, _, key = arg.partition("=")
    if kind == "name":
        out[arg] = user(pwd.getpwnam, key)
    elif kind == "uid":
        out[arg] = user(pwd.getpwuid, int(key))
    elif kind == "grouplist":
        name, gid = key.split(",")
        out[arg] = os.getgrouplist(name, int(gid))
    elif kind == "gid":
        try:
            entry = grp.getgrgid(int(key))
            out[arg] = [entry.gr_name, entry.gr_mem]
        except KeyError:
            out[arg] = None
    elif kind == "group":
        try:
            entry = grp.getgrnam(key)
            out[arg] = [entry.gr_gid, entry.gr_mem]
        except KeyError:
            out[arg] = None
    elif kind == "all":
        out[arg] = [[e.pw_name, e.pw_uid] for e in pwd.getpwall()]
print(json.dumps(out))
"""


def lookup(ci: NssCi, *queries: str) -> dict[str, Any]:
    """Answer each query ("name=X", "uid=N", "grouplist=X,GID", "gid=N", "group=X",
    "all") in a child process under the harness."""
    done = subprocess.run(
        [sys.executable, "-c", LOOKUP, *queries],
        env={**os.environ, **ci.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stderr == "", done.stderr  # nss_wrapper and the module are silent
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_any_spelling_of_a_name_resolves_to_the_canonical_name_and_uid(nss_ci: NssCi) -> None:
    """getpwnam matches directory names case-insensitively and always answers with the
    directory's own spelling (which need not be lower case) and its uid."""
    got = lookup(
        nss_ci,
        "name=alice",
        "name=Alice",
        "name=ALICE",
        "name=aLiCe",
        "name=Carol",
        "name=carol",
        "name=CAROL",
    )
    for spelling in ("alice", "Alice", "ALICE", "aLiCe"):
        assert got[f"name={spelling}"] == ["alice", ALICE.uid]
    for spelling in ("Carol", "carol", "CAROL"):
        assert got[f"name={spelling}"] == ["Carol", CAROL.uid]


def test_a_uid_resolves_to_the_canonical_name(nss_ci: NssCi) -> None:
    """getpwuid answers a directory uid with the canonical name."""
    got = lookup(nss_ci, f"uid={ALICE.uid}", f"uid={CAROL.uid}")
    assert got == {
        f"uid={ALICE.uid}": ["alice", ALICE.uid],
        f"uid={CAROL.uid}": ["Carol", CAROL.uid],
    }


def test_unknown_names_and_uids_are_not_found(nss_ci: NssCi) -> None:
    """A name or uid in neither /etc/passwd nor the directory is not found, in any case."""
    got = lookup(nss_ci, "name=nobody-here", "name=ALICEX", "name=alic", "uid=200999")
    assert set(got.values()) == {None}


def test_local_users_still_resolve_case_sensitively(nss_ci: NssCi) -> None:
    """The machine's own users still resolve, from /etc/passwd, exactly as spelled there:
    like glibc's files source, nss_wrapper's files backend does not fold case."""
    got = lookup(nss_ci, "name=root", "uid=0", "name=ROOT")
    assert got == {"name=root": ["root", 0], "uid=0": ["root", 0], "name=ROOT": None}


def test_enumeration_lists_local_users_then_directory_users(nss_ci: NssCi) -> None:
    """getpwall (getpwent) lists /etc/passwd's users, then the directory's, each once and
    canonically spelled (mfad finds a group's primary members this way)."""
    everyone = lookup(nss_ci, "all")["all"]
    assert everyone[0] == ["root", 0]  # /etc/passwd's first line
    assert everyone[-2:] == [["alice", ALICE.uid], ["Carol", CAROL.uid]]
    assert len(everyone) == len({name for name, _ in everyone})


def test_the_test_process_itself_does_not_see_the_directory(nss_ci: NssCi) -> None:
    """Only a process given the environment sees the directory's users."""
    with pytest.raises(KeyError):
        pwd.getpwnam("alice")
    with pytest.raises(KeyError):
        pwd.getpwuid(ALICE.uid)


def test_groups_resolve_for_local_and_directory_users(nss_ci: NssCi) -> None:
    """getgrouplist, getgrgid and getgrnam answer for directory users (by canonical name)
    and for the machine's own groups; nss_wrapper's getgrouplist matches member names
    exactly, so a non-canonical spelling finds only the primary group."""
    got = lookup(
        nss_ci,
        f"grouplist=alice,{ALICE.gid}",
        f"grouplist=ALICE,{ALICE.gid}",
        f"grouplist=Carol,{CAROL.gid}",
        "grouplist=root,0",
        f"gid={CI_GROUP.gid}",
        f"gid={ALICE.gid}",
        "group=mfa-ci",
        "group=root",
    )
    assert sorted(got[f"grouplist=alice,{ALICE.gid}"]) == [ALICE.gid, CI_GROUP.gid]
    assert got[f"grouplist=ALICE,{ALICE.gid}"] == [ALICE.gid]
    assert sorted(got[f"grouplist=Carol,{CAROL.gid}"]) == [CAROL.gid, CI_GROUP.gid]
    assert got["grouplist=root,0"][0] == 0
    assert got[f"gid={CI_GROUP.gid}"] == ["mfa-ci", ["alice", "Carol"]]
    assert got[f"gid={ALICE.gid}"] == ["alice", []]
    assert got["group=mfa-ci"] == [CI_GROUP.gid, ["alice", "Carol"]]
    assert got["group=root"][0] == 0


def test_a_changed_directory_is_seen_by_a_running_process(nss_ci: NssCi) -> None:
    """set_users takes effect at once in a process already running: the module reads its
    file on every lookup (here alice is deleted and re-created with another uid)."""
    script = (
        "import pwd, sys\n"
        "for line in sys.stdin:\n"
        "    e = pwd.getpwnam(line.strip())\n"
        "    print(e.pw_name, e.pw_uid, flush=True)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, **nss_ci.env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None

        def ask(name: str) -> list[str]:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(f"{name}\n")
            child.stdin.flush()
            return child.stdout.readline().split()

        try:
            assert ask("ALICE") == ["alice", str(ALICE.uid)]
            nss_ci.set_users([CiUser("alice", 200777, ALICE.gid), CAROL])
            assert ask("Alice") == ["alice", "200777"]
        finally:
            child.stdin.close()
        assert child.wait(timeout=10) == 0


def test_directory_users_may_not_shadow_local_ones(tmp_path: Path) -> None:
    """The harness refuses a directory user named like a local user in another case
    (nss_wrapper would answer "ROOT" from the directory but "root" from /etc/passwd)."""
    with pytest.raises(ValueError, match="clashes with the local user 'root'"):
        nss_ci_env(tmp_path, users=[CiUser("Root", 200500, 200500)], groups=[])


def test_mfad_runs_with_the_harness_as_its_name_service(ci_daemon: Daemon) -> None:
    """mfad starts under the preload, has nss_wrapper and the module mapped, answers a
    control request for a directory user, and its own NSS lookups find that user
    (enroll_begin refuses users NSS does not know)."""
    assert ci_daemon.proc is not None
    maps = Path(f"/proc/{ci_daemon.proc.pid}/maps").read_text()
    assert "/libnss_wrapper.so" in maps
    assert "/libnss_ci-" in maps
    status = ci_daemon.request("status", user="alice")
    assert status["ok"] is True, status
    begun = ci_daemon.request("enroll_begin", user="alice")
    assert begun["ok"] is True, begun

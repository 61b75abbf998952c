"""pam-mfa installed on a clean Debian 12 root file system, not on this machine.

Each test unpacks a minimal bookworm root (mmdebstrap --variant=minbase, cached as a
tarball under /var/cache/pam-mfa-tests/ per suite and day, so only the first run of a
day builds one; a machine with no cache builds it from the Debian mirror), mounts
/proc, /sys and /dev into it, and works inside it with chroot:

- the README's install command, `bash scripts/install.sh`, from a copy of this tree;
- the Debian package built from this tree (scripts/build-deb.sh, which also runs
  lintian), installed with `apt-get install ./pam-mfa_*.deb`, then removed and purged
  with a listing of the root before and after.

In both a new user is enrolled with `mfa enroll` and authenticated through the
installed /usr/lib/x86_64-linux-gnu/security/pam_mfa.so by pamtester (Debian's
package) and the root's own mfad. There is no systemd in a chroot: install.sh then
starts mfad itself (its documented fallback), and the package only enables the unit,
so the test starts the packaged /usr/sbin/mfad as the unit would; the unit itself is
checked by `systemd-analyze verify` (below).

The root gets the host's /etc/resolv.conf (apt and pip reach the mirrors as the host
does) and, for pip, the host's CA bundle named by PIP_CERT if the host sets one.
apt's downloaded packages and pip's cache live in the cache directory too (bind
mounts), so a warm run downloads nothing. At teardown every process whose root is the
chroot is killed, every mount is undone, and the root is deleted only once nothing is
mounted under it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, totp_now

pytestmark = pytest.mark.install

CACHE = Path("/var/cache/pam-mfa-tests")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PAM_DIR = "/usr/lib/x86_64-linux-gnu/security"
SERVICE = "mfa-test"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Paths left out of the before/after listings, and why: none of them is a file of
# pam-mfa's. Our own dpkg entries are checked apart (no /var/lib/dpkg/info/pam-mfa.*).
NOISE = (
    "/proc",  # the kernel's, mounted
    "/sys",  # the kernel's, mounted
    "/dev",  # the host's /dev, bind-mounted
    "/var/cache/apt",  # apt's package cache (downloads bind-mounted from CACHE)
    "/var/lib/apt",  # apt's package lists and extended_states
    "/var/lib/dpkg",  # dpkg's database: status, file lists, triggers
    "/var/log/apt",  # apt's history and term logs
    "/var/log/dpkg.log",  # dpkg's log
    "/var/log/alternatives.log",  # update-alternatives' log (dpkg runs it)
    "/var/cache/debconf",  # debconf's database, rewritten by every dpkg run
    "/var/cache/ldconfig",  # ldconfig's aux cache (dpkg's libc trigger)
    "/etc/ld.so.cache",  # rewritten by the same trigger
)


def _noise(rel: str) -> bool:
    return any(rel == n or rel.startswith(n + "/") for n in NOISE)


def listing(root: Path) -> dict[str, str]:
    """Every path in `root` (outside NOISE) with its type, mode, owner and, for a file,
    the SHA-256 of its content: a file changed in place shows up too."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath, name)
            rel = "/" + str(path.relative_to(root))
            if _noise(rel):
                continue
            st = os.lstat(path)
            owner = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}"
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = f"{owner} {digest}"
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = f"{owner} -> {os.readlink(path)}"
            else:
                out[rel] = owner
                # A mount point is listed, not entered (the pip cache, bind-mounted).
                if stat.S_ISDIR(st.st_mode) and name in dirnames and not os.path.ismount(path):
                    keep.append(name)
        dirnames[:] = keep
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'+ path' added, '- path' removed, '~ path' changed: what a person would read."""
    lines = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


def root_tarball() -> Path:
    """A minimal bookworm root as a tarball: today's from the cache, else a new one
    (made under a temporary name, so an interrupted build is never taken for one)."""
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    tar = CACHE / f"{SUITE}-minbase-{datetime.date.today():%Y%m%d}.tar"
    if not tar.exists():
        part = CACHE / f".{tar.stem}.{os.getpid()}.tar"
        try:
            subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--mode=root",
                    "--quiet",
                    SUITE,
                    str(part),
                    MIRROR,
                ],
                check=True,
                timeout=900,
            )
            os.replace(part, tar)
        finally:
            part.unlink(missing_ok=True)
        for old in CACHE.glob(f"{SUITE}-minbase-*.tar"):
            if old != tar:
                old.unlink()
    return tar


class CleanRoot:
    """A bookworm root in a temporary directory, with /proc, /sys, /dev and the download
    caches mounted; `run` executes a bash script inside it with chroot."""

    def __init__(self, tmp: Path, tarball: Path, *, pip_cache: bool) -> None:
        self.path = (tmp / "root").resolve()
        self.path.mkdir()
        self.mounts: list[Path] = []
        self.env = {
            "PATH": PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_ROOT_USER_ACTION": "ignore",
        }
        subprocess.run(["tar", "-xpf", str(tarball), "-C", str(self.path)], check=True)
        shutil.copy("/etc/resolv.conf", self.path / "etc/resolv.conf")
        self._mount(["-t", "proc", "proc"], "proc")
        self._mount(["-t", "sysfs", "-o", "ro", "sysfs"], "sys")
        self._mount(["--bind", "/dev"], "dev")
        for cache, inside_path in (("apt-archives", "var/cache/apt/archives"),):
            host = CACHE / cache
            (host / "partial").mkdir(parents=True, exist_ok=True)
            self._mount(["--bind", str(host)], inside_path)
        if pip_cache:
            (CACHE / "pip").mkdir(parents=True, exist_ok=True)
            self._mount(["--bind", str(CACHE / "pip")], "root/.cache/pip")
            # Where no package writes (ca-certificates rewrites its own bundle).
            cert = os.environ.get("PIP_CERT", "")
            if cert and Path(cert).is_file():
                shutil.copy(cert, self.path / "root/.host-ca.pem")
                self.env["PIP_CERT"] = "/root/.host-ca.pem"

    def _mount(self, how: list[str], where: str) -> None:
        target = self.path / where
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *how, str(target)], check=True)
        self.mounts.append(target)

    def run(
        self, script: str, *, stdin: str | None = None, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """`script` under bash -euo pipefail in the root, as root; output captured."""
        result = subprocess.run(
            ["chroot", str(self.path), "/bin/bash", "-euo", "pipefail", "-c", script],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"in the root: {script!r} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
            )
        return result

    def processes(self) -> list[int]:
        """Every process whose root directory is this root (started inside it)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(entry / "root")) == self.path:
                        pids.append(int(entry.name))
        return pids

    def mounted(self) -> list[str]:
        """Mount points at or under this root, from the kernel's table."""
        points = []
        with open("/proc/self/mountinfo") as table:
            for line in table:
                point = line.split()[4].replace("\\040", " ")
                if point == str(self.path) or point.startswith(str(self.path) + "/"):
                    points.append(point)
        return points

    def close(self) -> None:
        """Kill what runs inside, unmount, and delete the root only if nothing is
        mounted under it any more (rmtree would descend into the host's /dev)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for _ in range(100):
                if not self.processes():
                    break
                time.sleep(0.1)
        for target in reversed(self.mounts):
            if subprocess.run(["umount", str(target)], check=False).returncode != 0:
                subprocess.run(["umount", "--lazy", str(target)], check=False)
        left = self.mounted()
        assert not left, f"still mounted, root {self.path} kept: {left}"
        assert not self.processes(), f"processes still inside {self.path}"
        shutil.rmtree(self.path)


@pytest.fixture(scope="module")
def tarball() -> Path:
    return root_tarball()


@pytest.fixture
def clean_root(
    request: pytest.FixtureRequest, tmp_path: Path, tarball: Path
) -> Iterator[CleanRoot]:
    """A fresh root; pip's cache is mounted for tests marked `pip` (install.sh runs pip)."""
    pip = request.node.get_closest_marker("pip") is not None
    # One clean root at a time on this machine: they share apt's download cache, whose
    # lock apt does not wait for (another worktree's test run may be at it).
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = CleanRoot(tmp_path, tarball, pip_cache=pip)
        try:
            root.run("apt-get update -qq")
            yield root
        finally:
            root.close()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package built from this tree by scripts/build-deb.sh (lintian must pass)."""
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/build-deb.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (found,) = out.glob("pam-mfa_*_amd64.deb")
    yield found
    shutil.rmtree(out)


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(300):
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
            s.connect(str(path))
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"mfad exited {proc.returncode} before {path} answered")
        time.sleep(0.1)
    pytest.fail(f"nothing answers on {path}")


def prepare_login_test(root: CleanRoot, user: str) -> None:
    """pamtester, a user and a PAM service that asks pam_mfa.so alone (no password, so
    the code is all that decides)."""
    root.run("apt-get install -y -qq --no-install-recommends pamtester >/dev/null")
    root.run(f"useradd --create-home {user}")
    service = root.path / "etc/pam.d" / SERVICE
    service.write_text(f"auth required {PAM_DIR}/pam_mfa.so\naccount required pam_permit.so\n")


def enrol_and_log_in(root: CleanRoot, user: str) -> None:
    """`mfa enroll` inside the root, then logins through the installed module: a wrong
    code is refused, the right one accepted."""
    # No code on stdin: the key is printed and the enrolment left pending (exit 1).
    begun = root.run(f"mfa enroll {user} </dev/null", check=False).stdout
    match = re.search(r"Key:\s+([A-Z2-7 ]+)\n", begun)
    assert match, begun
    secret = match.group(1).replace(" ", "")
    confirmed = root.run(f"mfa enroll {user} --confirm", stdin=totp_now(secret) + "\n")
    assert "is active" in confirmed.stdout, confirmed.stdout
    status = root.run(f"mfa status {user}").stdout
    assert "active" in status, status

    right = totp_now(secret, 1)  # the next step: the confirmation used this one
    near = {totp_now(secret, k) for k in range(-2, 4)}
    wrong = next(
        c for c in (f"{(int(right) + d) % 10**6:06d}" for d in range(1, 99)) if c not in near
    )
    refused = root.run(
        f"pamtester -v {SERVICE} {user} authenticate", stdin=wrong + "\n", check=False
    )
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "successfully authenticated" not in refused.stdout + refused.stderr
    accepted = root.run(
        f"pamtester -v {SERVICE} {user} authenticate", stdin=right + "\n", check=False
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "successfully authenticated" in accepted.stdout + accepted.stderr


@pytest.mark.pip
def test_install_script_in_clean_root(clean_root: CleanRoot) -> None:
    """The README's install command works on a clean Debian 12: it installs what it needs,
    builds and installs pam_mfa.so into the PAM module directory, starts mfad (without
    systemd: in the background, with a pid file), and a new user can enrol with mfa and
    then log in through the module with a code, not with a wrong one."""
    root = clean_root
    src = root.path / "root/pam-mfa"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        rel = os.fsdecode(name)
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)

    installed = root.run("cd /root/pam-mfa && bash scripts/install.sh", timeout=1200)
    assert "mfad is running" in installed.stdout, installed.stdout
    assert (root.path / PAM_DIR.lstrip("/") / "pam_mfa.so").is_file()
    key = (root.path / "etc/mfad/secret.key").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_uid) == (0o600, 0)

    prepare_login_test(root, "mfatinst")
    enrol_and_log_in(root, "mfatinst")


def test_package_in_clean_root(clean_root: CleanRoot, deb: Path) -> None:
    """The Debian package on a clean Debian 12: `apt-get install ./pam-mfa_*.deb` puts the
    module in the PAM module directory and creates the key (0600 root) without touching
    /etc/pam.d; the packaged mfad serves an enrolment and a login through the module;
    bash completes mfa's commands; a reinstall keeps the key; `dpkg -r` leaves only the
    config, key, accounts and audit trail (and debhelper's record that the unit was
    enabled), and `dpkg --purge` leaves no file of ours: the root's listing after purge
    equals the one before install."""
    root = clean_root
    prepare_login_test(root, "mfatdeb")
    shutil.copy(deb, root.path / "tmp" / deb.name)
    # The dependencies first, so that the listing before install holds them and the
    # comparison after purge is about pam-mfa's own files.
    depends = root.run(f"dpkg-deb -f /tmp/{deb.name} Depends").stdout.strip()
    root.run(f"apt-get satisfy -y -qq --no-install-recommends '{depends}' >/dev/null")
    (root.path / "tmp" / deb.name).unlink()
    before = listing(root.path)

    shutil.copy(deb, root.path / "tmp" / deb.name)
    root.run(f"apt-get install -y -qq --no-install-recommends /tmp/{deb.name} >/dev/null")
    (root.path / "tmp" / deb.name).unlink()
    installed = diff(before, listing(root.path))
    assert f"+ {PAM_DIR}/pam_mfa.so" in installed
    assert "+ /etc/systemd/system/multi-user.target.wants/mfad.service" in installed
    assert not [line for line in installed if line.startswith("~ /etc/pam.d")], installed
    assert not [line for line in installed if line[0] in "~-"], installed
    key = (root.path / "etc/mfad/secret.key").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_uid) == (0o600, 0)
    unit = (root.path / "lib/systemd/system/mfad.service").read_text()
    assert "\nExecStart=/usr/sbin/mfad --config /etc/mfad/mfad.yaml\n" in unit

    # No systemd in a chroot: start the packaged daemon as the unit's ExecStart does.
    (root.path / "run/mfad").mkdir(mode=0o755, exist_ok=True)
    with open(root.path.parent / "mfad.log", "wb") as log:
        daemon = subprocess.Popen(
            ["chroot", str(root.path), "/usr/sbin/mfad", "--config", "/etc/mfad/mfad.yaml"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=root.env,
            start_new_session=True,
        )
    try:
        wait_for_socket(root.path / "run/mfad/control.sock", daemon)
        enrol_and_log_in(root, "mfatdeb")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)

    # bash completes mfa's commands from the installed completion file.
    completed = root.run(
        "source /usr/share/bash-completion/completions/mfa; COMP_WORDS=(mfa enr); "
        'COMP_CWORD=1; _mfa_completion mfa; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert completed.stdout.split() == ["enroll"], completed.stdout

    # Reinstalling (as an upgrade does) keeps the key the secrets are sealed with.
    key_before = (root.path / "etc/mfad/secret.key").read_bytes()
    shutil.copy(deb, root.path / "tmp" / deb.name)
    root.run(f"dpkg -i /tmp/{deb.name} >/dev/null")
    (root.path / "tmp" / deb.name).unlink()
    assert (root.path / "etc/mfad/secret.key").read_bytes() == key_before

    root.run("dpkg -r pam-mfa >/dev/null")
    kept = r"^\+ (/etc/mfad|/var/lib/mfad|/var/log/mfad|/etc/systemd/system|/var/lib/systemd)(/|$)"
    removed = diff(before, listing(root.path))
    assert [line for line in removed if not re.match(kept, line)] == []
    assert "+ /etc/mfad/secret.key" in removed

    root.run("dpkg --purge pam-mfa >/dev/null")
    assert diff(before, listing(root.path)) == []
    assert not list((root.path / "var/lib/dpkg/info").glob("pam-mfa.*"))


def systemd_verify(unit_text: str, tmp: Path) -> str:
    """`systemd-analyze verify` of the unit with its ExecStart binary (which must exist
    for verify) replaced by this venv's mfad; everything it prints."""
    match = re.search(r"^ExecStart=(\S+) ", unit_text, re.MULTILINE)
    assert match, unit_text
    stand_in = Path(sys.executable).parent / "mfad"
    assert stand_in.is_file()
    unit = tmp / "mfad.service"
    unit.write_text(unit_text.replace(f"ExecStart={match.group(1)} ", f"ExecStart={stand_in} "))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    return f"{result.stdout}{result.stderr}" + ("" if result.returncode == 0 else " (failed)")


def test_systemd_verify_sees_a_broken_unit(tmp_path: Path) -> None:
    """The check below is live: systemd-analyze verify reports an unknown key and a bad
    value in a copy of the unit."""
    text = (ROOT / "systemd/mfad.service").read_text()
    text = text.replace("Restart=on-failure", "Restart=sometimes\nRestartSecs=2s")
    report = systemd_verify(text, tmp_path)
    assert "RestartSecs" in report and "sometimes" in report, report


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd/mfad.service (install.sh's unit) passes `systemd-analyze verify` with
    nothing to report."""
    assert systemd_verify((ROOT / "systemd/mfad.service").read_text(), tmp_path) == ""


def test_packaged_unit_verifies(tmp_path: Path, deb: Path) -> None:
    """The package's unit is systemd/mfad.service with only ExecStart changed, to the
    package's /usr/sbin/mfad, which the package ships as an executable; it passes
    `systemd-analyze verify` with nothing to report."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "pkg")], check=True)
    packaged = (tmp_path / "pkg/lib/systemd/system/mfad.service").read_text()
    source = (ROOT / "systemd/mfad.service").read_text()
    assert packaged == source.replace(
        "\nExecStart=/usr/local/sbin/mfad ", "\nExecStart=/usr/sbin/mfad "
    )
    assert os.access(tmp_path / "pkg/usr/sbin/mfad", os.X_OK)
    assert systemd_verify(packaged, tmp_path) == ""


def test_package_makes_the_key_before_starting_mfad(tmp_path: Path, deb: Path) -> None:
    """On a machine with systemd the package's postinst starts mfad (there is none here:
    this is the closest check); it creates the key first, so the first start finds it."""
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    postinst = (tmp_path / "control/postinst").read_text()
    start = postinst.index("deb-systemd-invoke $_dh_action 'mfad.service'")
    assert postinst.index("mfad --generate-key") < start

"""Moving from google-authenticator-libpam and pam_oath without anyone enrolling again.

The google-authenticator files are made by the real `google-authenticator`
command (Debian's libpam-google-authenticator), run as the throwaway user,
with each of its options; after `mfa import`, the user logs in through the
real sshd and OpenSSH client with a code from the same key, and with one of
the old scratch codes, once. The pam_oath usersfile is written in the format
liboath reads and writes, with codes from the real `oathtool`; logins go
through the real libpam.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyotp
import pytest
from conftest import SEEN, Daemon, MakeGroup, MakeUser, PamLogin
from sshd import PrivateSshd

pytest_plugins = ["sshd"]

PASSWORD = "correct horse battery staple 42"
COMMAND = "echo logged-in-as-$(id -un)"
MFA = Path(sys.executable).with_name("mfa")


def mfa(mfad: Daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `mfa`, as root, against `mfad`."""
    return subprocess.run(
        [str(MFA), "--socket", str(mfad.control_socket), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class GaFile:
    """A ~/.google_authenticator written by the real google-authenticator as its user."""

    def __init__(self, user: str, *options: str) -> None:
        self.user = user
        self.path = Path(os.path.expanduser(f"~{user}")) / ".google_authenticator"
        subprocess.run(
            ["runuser", "-u", user, "--", "google-authenticator", *options, "-fqs", str(self.path)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        lines = self.path.read_text().splitlines()
        self.secret = lines[0]
        self.options = [line for line in lines if line.startswith('" ')]
        self.scratch = [line for line in lines[1:] if line.isdigit()]
        SEEN["secret"].add(self.secret)
        SEEN["code"].update(self.scratch)

    def code(self, counter: int | None = None) -> str:
        """The code an app shows now (or, HOTP, at `counter`)."""
        key = self.secret
        if counter is not None:
            value = pyotp.HOTP(key).at(counter)
        else:
            step = next((int(o.split()[2]) for o in self.options if "STEP_SIZE" in o), 30)
            value = pyotp.TOTP(key, interval=step).now()
        SEEN["code"].add(value)
        return value


def no_secret_in(text: str, ga: GaFile) -> bool:
    return ga.secret not in text and not any(c in text for c in ga.scratch)


GA_OPTIONS = {
    "totp-reuse-off-rate-limited": ["-t", "-d", "-r", "3", "-R", "30", "-w", "3", "-e", "3"],
    "totp-wide-window-60s-steps": ["-t", "-D", "-u", "-w", "17", "-S", "60", "-e", "2"],
    "hotp-counter": ["-c", "-u", "-w", "5", "-e", "2"],
}


@pytest.mark.ssh
@pytest.mark.parametrize("options", GA_OPTIONS.values(), ids=list(GA_OPTIONS))
def test_a_google_authenticator_user_logs_in_over_ssh_after_import(
    mfa_sshd: PrivateSshd, mfad: Daemon, make_user: MakeUser, options: list[str]
) -> None:
    """After `mfa import google-authenticator USER`, the user logs in over ssh with the
    code their app (or token) shows for the same key, and with an old scratch code once;
    the report names what differs and shows no key or code."""
    user = make_user(PASSWORD)
    ga = GaFile(user, *options)
    hotp = "-c" in options

    done = mfa(mfad, "import", "google-authenticator", user)

    assert done.returncode == 0, done.stderr
    assert f"Imported {user}: " + ("counter-based" if hotp else "time-based") in done.stdout
    assert "remove the old files" in done.stdout
    assert no_secret_in(done.stdout + done.stderr, ga)
    if "-r" in options:
        assert "rate limit: the file allowed 3 logins per 30 s" in done.stdout
    if "-D" in options:
        assert "reuse: the file allowed a code twice" in done.stdout
    if "17" in options:
        assert "the file took codes from 8 steps before to 8 after" in done.stdout
    status = mfad.request("status", user=user)
    assert (status["state"], status["method"]) == ("active", "hotp" if hotp else "totp")
    assert status["recovery_codes_left"] == len(ga.scratch)
    if "-S" in options:
        assert status["period"] == 60

    first: Callable[[str], str] = lambda _screen: ga.code(1 if hotp else None)  # noqa: E731
    with_code = mfa_sshd.login(user, PASSWORD, [first], COMMAND)
    assert with_code.exit_status == 0, with_code.output + mfa_sshd.logs()
    assert f"logged-in-as-{user}" in with_code.output

    scratch = mfa_sshd.login(user, PASSWORD, [ga.scratch[0]], COMMAND)
    assert scratch.exit_status == 0, scratch.output
    again = mfa_sshd.login(user, PASSWORD, [ga.scratch[0]] * 3, COMMAND)
    assert again.exit_status == 255 and f"logged-in-as-{user}" not in again.output
    methods = [h["method"] for h in mfad.request("show", user=user)["history"]]
    assert methods == ["recovery", "hotp" if hotp else "totp"]
    imports = [r for r in mfad.audit() if r.get("op") == "import_google_authenticator"]
    assert [(r["user"], r["outcome"]) for r in imports] == [(user, "success")]


def test_dry_run_reports_and_changes_nothing(mfad: Daemon, make_user: MakeUser) -> None:
    """--dry-run says what would be imported and leaves every account as it was."""
    user = make_user()
    ga = GaFile(user, "-t", "-d", "-u", "-w", "3")
    before = mfa(mfad, "list", "--json").stdout

    dry = mfa(mfad, "import", "google-authenticator", user, "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert f"Would import {user}: time-based" in dry.stdout
    assert "dry run: nothing was changed" in dry.stdout
    assert no_secret_in(dry.stdout, ga)
    assert mfad.request("status", user=user)["state"] == "none"
    assert mfa(mfad, "list", "--json").stdout == before


def test_unsafe_or_broken_files_are_skipped_with_the_reason(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """A file that is a symbolic link, writable by others, owned by someone else, missing,
    or malformed (named by line, never quoted) is skipped; the others are imported;
    a user who is already enrolled is skipped too."""
    linked, loose, foreign, missing, broken, fine, enrolled = (make_user() for _ in range(7))
    GaFile(fine, "-t", "-d", "-u", "-w", "3")
    target = GaFile(foreign, "-t", "-d", "-u", "-w", "3")
    os.symlink(target.path, Path(os.path.expanduser(f"~{linked}")) / ".google_authenticator")
    GaFile(loose, "-t", "-d", "-u", "-w", "3").path.chmod(0o646)
    bad = GaFile(broken, "-t", "-d", "-u", "-w", "3")
    lines = bad.path.read_text().splitlines()
    bad_line = lines.index('" TOTP_AUTH') + 1
    bad.path.write_text("\n".join(lines).replace('" TOTP_AUTH', "TOTP_AUTH") + "\n")
    GaFile(enrolled, "-t", "-d", "-u", "-w", "3")
    mfad.enroll(enrolled)
    os.chown(target.path, 0, 0)

    done = mfa(mfad, "import", "google-authenticator", linked, loose, missing, broken, fine)
    again = mfa(mfad, "import", "google-authenticator", enrolled, foreign)

    out = done.stdout + again.stdout
    assert f"Imported {fine}: time-based" in out
    assert f"Skipped {linked}: " in out and "is a symbolic link" in out
    assert f"Skipped {loose}: " in out and "writable by group or others" in out
    assert f"Skipped {missing}: " in out and "does not exist" in out
    assert f"Skipped {broken}: " in out and f"line {bad_line}: neither an option" in out
    assert f"Skipped {foreign}: " in out and "owned by uid 0, not the user" in out
    assert f"Skipped {enrolled}: {enrolled} is already enrolled" in out
    assert bad.secret not in out and target.secret not in out
    states = {u: mfad.request("status", user=u)["state"] for u in (linked, loose, broken)}
    assert set(states.values()) == {"none"}


def test_a_fifo_is_never_opened_and_an_admin_group_member_reads_only_under_homes(
    mfad: Daemon, make_user: MakeUser, make_group: MakeGroup
) -> None:
    """A FIFO at the path is refused as not a regular file, and the import goes on. A
    member of admin_group, not root, may import only from under each user's home: a path
    elsewhere (here /etc/shadow for root) is refused before it is read, and the answer
    says nothing of what is there (review of 2026-11-30)."""
    piped, admin = make_user(), make_user()
    os.mkfifo(Path(os.path.expanduser(f"~{piped}")) / ".google_authenticator")
    done = mfa(mfad, "import", "google-authenticator", piped)
    assert f"Skipped {piped}: " in done.stdout and "not a regular file" in done.stdout
    mfad.restart(admin_group=make_group(admin))
    outside = mfad.mfa_as(admin, "import", "google-authenticator", "root", "--path", "/etc/shadow")
    assert "outside root's home: only root may import from there" in outside.stdout, outside
    assert "owned by" not in outside.stdout and "line 1" not in outside.stdout


def test_only_administrators_may_import(mfad: Daemon, make_user: MakeUser) -> None:
    """A user importing even their own file is refused (exit 4), and nothing changes."""
    user = make_user()
    GaFile(user, "-t", "-d", "-u", "-w", "3")
    own = mfad.mfa_as(user, "import", "google-authenticator", user)
    assert own.returncode == 4, own.stderr
    assert mfad.request("status", user=user)["state"] == "none"


# --- pam_oath ---


def oathtool(*args: str) -> str:
    code = subprocess.run(
        ["oathtool", *args], check=True, capture_output=True, text=True
    ).stdout.strip()
    SEEN["code"].add(code)
    return code


def usersfile(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "users.oath"
    path.write_text("# pam_oath usersfile\n\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def key() -> str:
    value = os.urandom(20).hex()
    SEEN["secret"].add(value)
    SEEN["secret"].add(base64.b32encode(bytes.fromhex(value)).decode().rstrip("="))
    return value


def test_a_usersfile_keeps_counters_so_used_codes_stay_used(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin, tmp_path: Path
) -> None:
    """HOTP lines continue from their counter: a line whose last code was counter 5
    refuses the codes of 5 and below and takes 6; a line with a counter but no last code
    takes that counter's code; an 8-digit HOTP/E/8 token works with 8 digits; a TOTP
    line (HOTP/T30) takes the current code, but one whose last login is now refuses it;
    a PIN is reported as not kept."""
    used, fresh, eight, app, recent = (make_user() for _ in range(5))
    k_used, k_fresh, k_eight, k_app, k_recent = (key() for _ in range(5))
    now = time.strftime("%Y-%m-%dT%H:%M:%SL", time.localtime())
    path = usersfile(
        tmp_path,
        [
            f"HOTP\t{used}\t-\t{k_used}\t5\t{oathtool('-c', '5', k_used)}\t2024-01-31T12:00:00L",
            f"HOTP {fresh} + {k_fresh} 3",
            f"HOTP/E/8 {eight} 1234 {k_eight}",
            f"HOTP/T30 {app} - {k_app}",
            f"HOTP/T30/6\t{recent}\t-\t{k_recent}\t0\t{oathtool('--totp', k_recent)}\t{now}",
        ],
    )

    done = mfa(mfad, "import", "oath", str(path))

    assert done.returncode == 0, done.stderr
    for user in (used, fresh, eight, app, recent):
        assert f"Imported {user}: " in done.stdout
    assert done.stdout.count("PIN: the line had a PIN") == 1
    assert not any(k in done.stdout for k in (k_used, k_fresh, k_eight, k_app, k_recent))
    tries = [oathtool("-c", str(c), k_used) for c in (5, 4, 6)]
    assert pam_login(used, tries).name == "PAM_SUCCESS"
    refused = [r["reason"] for r in mfad.audit() if r["event"] == "attempt"]
    assert refused == ["replayed_code", "replayed_code"]
    assert pam_login(fresh, [oathtool("-c", "3", k_fresh)]).name == "PAM_SUCCESS"
    assert pam_login(eight, [oathtool("-d", "8", "-c", "0", k_eight)]).name == "PAM_SUCCESS"
    assert pam_login(app, [oathtool("--totp", k_app)]).name == "PAM_SUCCESS"
    assert pam_login(recent, [oathtool("--totp", k_recent)] * 3).name == "PAM_MAXTRIES"
    assert mfad.request("status", user=used)["hotp_counter"] == 6


def test_a_malformed_usersfile_names_its_line_and_imports_nothing(
    mfad: Daemon, make_user: MakeUser, tmp_path: Path
) -> None:
    """A bad line (here the sixth: a secret that is not hex) fails the whole file: the
    message names the line and does not quote it, and the good line before it is not
    imported either."""
    good, bad = make_user(), make_user()
    secret = key()
    path = usersfile(tmp_path, [f"HOTP {good} - {key()} 0", f"HOTP {bad} - {secret}zz 0"])

    done = mfa(mfad, "import", "oath", str(path))

    assert done.returncode != 0
    assert "line 4: the secret is not hexadecimal" in done.stderr
    assert secret not in done.stderr + done.stdout
    assert mfad.request("status", user=good)["state"] == "none"


def test_oath_dry_run_changes_nothing(mfad: Daemon, make_user: MakeUser, tmp_path: Path) -> None:
    """--dry-run on a usersfile reports and imports nothing; unknown users are skipped."""
    user = make_user()
    path = usersfile(tmp_path, [f"HOTP {user} - {key()}", f"HOTP/T60 mfatnosuchuser - {key()}"])

    dry = mfa(mfad, "import", "oath", str(path), "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert f"Would import {user}: counter-based" in dry.stdout
    assert "Skipped mfatnosuchuser: line 4: no such user" in dry.stdout
    assert mfad.request("status", user=user)["state"] == "none"


def test_steps_the_old_module_marked_used_stay_used(
    mfad: Daemon, make_user: MakeUser, pam_login: PamLogin
) -> None:
    """A time step listed after " DISALLOW_REUSE (used at a login through the old module)
    is refused after the import as a replay; the next step's code is taken."""
    user = make_user()
    ga = GaFile(user, "-t", "-d", "-u", "-w", "3")
    step = int(time.time() // 30)
    ga.path.write_text(ga.path.read_text().replace('" DISALLOW_REUSE', f'" DISALLOW_REUSE {step}'))
    assert mfa(mfad, "import", "google-authenticator", user).returncode == 0
    # both within totp.window (1) of now, even if the step turns meanwhile
    now_code, next_code = (pyotp.TOTP(ga.secret).at(s * 30) for s in (step, step + 1))
    SEEN["code"].update({now_code, next_code})
    assert pam_login(user, [now_code, next_code]).name == "PAM_SUCCESS"
    reasons = [r["reason"] for r in mfad.audit() if r["event"] == "attempt"]
    assert reasons == ["replayed_code"]


def test_all_users_dry_run_lists_those_with_a_file(mfad: Daemon, make_user: MakeUser) -> None:
    """--all looks at every user NSS lists: those with a file are reported, those without
    are only counted; a dry run changes nothing."""
    user = make_user()
    GaFile(user, "-t", "-d", "-u", "-w", "3")
    dry = mfa(mfad, "import", "google-authenticator", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"Would import {user}: time-based" in dry.stdout
    assert "other users have no file." in dry.stdout
    assert mfad.request("status", user=user)["state"] == "none"

"""`mfa pam install SERVICE` and `mfa pam remove SERVICE`: put pam_mfa.so into a PAM
service file where it cannot be bypassed, and take it out again, byte for byte.

Run as root on the machine itself: it edits /etc/pam.d and asks mfad nothing.

Every edit is marked so that it can be undone without guessing: each line it adds
follows a line ``# mfa pam install: the next line ...``, and each line it switches off
(``--mode key``: the password lines) gets the prefix ``#mfa pam install: off# ``.
Before the first edit the file is copied to the backup directory, with a copy of what
was written beside it. ``remove`` writes the backup back when the file is still what
``install`` wrote; when someone has edited it since, it takes out exactly the marked
edits, keeps theirs, and leaves the backup.

A stack is written only if pamstack judges it sound (the same judgement as `mfa
doctor`'s): pam_mfa.so after the password check, never reached after a failed one, not
bypassable, and users who need no code let through. Where no place in the file gives
such a stack (``auth required pam_unix.so`` carries on after a wrong password), the
file is left alone and the reasons are printed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from mfa_cli import pamstack
from mfa_cli.display import safe
from mfa_cli.errors import CliError

DEFAULT_PAM_DIR = Path("/etc/pam.d")
DEFAULT_BACKUP_DIR = Path("/var/lib/mfad/pam-backup")
ADDED = "# mfa pam install: the next line is pam-mfa's; `mfa pam remove` takes it out\n"
OFF = "#mfa pam install: off# "
KEY_SERVICES = ("sshd",)
"""Services that check a public key before PAM runs: the only ones `--mode key` fits."""


class InstallRefused(CliError):
    """No stack that `mfa doctor` accepts can be written into this file; `reasons` are
    pamstack's findings, each a message and a fix, printed one per line."""

    def __init__(self, message: str, reasons: list[pamstack.Finding] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    message: str


def _added(line: str) -> str:
    return ADDED + line + "\n"


def strip_marked(text: str) -> str:
    """`text` without install's edits: added lines out, switched-off lines back on."""
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i] == ADDED:
            i += 2
            continue
        line = lines[i]
        out.append(line[len(OFF) :] if line.startswith(OFF) else line)
        i += 1
    return "".join(out)


def _is_marked(text: str) -> bool:
    return any(line == ADDED or line.startswith(OFF) for line in text.splitlines(keepends=True))


def _ends_with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def password_stack(pam_dir: Path, service: str, base: str, mfa_line: str) -> str:
    """`base` with `mfa_line` where the stack is sound: the first place after the password
    check that pamstack accepts; InstallRefused, with its findings, if there is none."""
    lines = _ends_with_newline(base).splitlines(keepends=True)
    logical = pamstack.logical_lines(base)
    auth = [
        entry
        for entry in logical
        if entry.kind == "@include" or entry.kind.lstrip("-").lower() == "auth"
    ]
    places = [entry.last + 1 for entry in auth] or [len(lines)]
    last: pamstack.Report | None = None
    for place in places:
        text = "".join([*lines[:place], _added(mfa_line), *lines[place:]])
        report = pamstack.analyse(pam_dir, service, text)
        if report.ok and report.mode == "password":
            return text
        last = report
    assert last is not None
    if last.mode == "key":
        raise InstallRefused(
            f"{pam_dir / service} has no password check for pam_mfa.so to follow; for sshd with "
            f"a public key and a code use `mfa pam install {service} --mode key`"
        )
    raise InstallRefused(_refusal(pam_dir / service), last.findings)


def key_stack(pam_dir: Path, service: str, base: str, mfa_line: str) -> str:
    """`base` with its password lines switched off and pam_mfa.so, then pam_permit.so, in
    their place: the code is the second factor after sshd's public key check."""
    if service not in KEY_SERVICES:
        raise InstallRefused(
            f"--mode key is for sshd with `AuthenticationMethods publickey,keyboard-interactive`:"
            f" {service} checks no public key, so its stack would ask for nothing but a code"
        )
    lines = _ends_with_newline(base).splitlines(keepends=True)
    off: list[pamstack.Physical] = []
    for entry in pamstack.logical_lines(base):
        is_auth = entry.kind.lstrip("-").lower() == "auth"
        if not (entry.kind == "@include" or is_auth):
            continue
        single = "".join(lines[entry.first : entry.last + 1])
        own = pamstack.flatten(pam_dir, service, text=single)
        if not any(line.name in pamstack.PASSWORD_MODULES for line in own):
            continue
        if entry.kind == "@include" and _includes_more_than_auth(pam_dir, entry.rest[0]):
            raise InstallRefused(
                f"{pam_dir / service}:{entry.first + 1} `{entry.text}` brings in more than auth "
                "lines: switch off its auth part by hand, then run `mfa doctor`"
            )
        off.append(entry)
    place = off[0].first if off else _first_auth(base, len(lines))
    switched = [
        OFF + line if any(e.first <= i <= e.last for e in off) else line
        for i, line in enumerate(lines)
    ]
    added = [_added(mfa_line), _added("auth       required     pam_permit.so")]
    text = "".join([*switched[:place], *added, *switched[place:]])
    report = pamstack.analyse(pam_dir, service, text)
    if not (report.ok and report.mode == "key"):
        raise InstallRefused(_refusal(pam_dir / service), report.findings)
    return text


def _first_auth(base: str, end: int) -> int:
    for entry in pamstack.logical_lines(base):
        if entry.kind.lstrip("-").lower() == "auth":
            return entry.first
    return end


def _includes_more_than_auth(pam_dir: Path, name: str) -> bool:
    path = Path(name) if name.startswith("/") else pam_dir / name
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return True
    return any(e.kind.lstrip("-").lower() != "auth" for e in pamstack.logical_lines(text))


def _refusal(path: Path) -> str:
    return f"{path} is left as it was: no place in it gives a safe stack (above: why)"


def install(
    pam_dir: Path,
    service: str,
    mode: str,
    module: str,
    args: tuple[str, ...],
    backup_dir: Path,
) -> Outcome:
    path = pam_dir / service
    current = _read(path)
    base = strip_marked(current)
    for line in pamstack.flatten(pam_dir, service, text=base):
        if line.name == pamstack.MODULE:
            raise InstallRefused(
                f"{line} was not written by `mfa pam install`: take it out by hand to let "
                "`mfa pam install` manage the stack, or keep it (`mfa doctor` checks it)"
            )
    control = "required" if mode == "password" else "requisite"
    mfa_line = " ".join(["auth      ", f"{control:<12}", module, *args]).rstrip()
    build = password_stack if mode == "password" else key_stack
    text = build(pam_dir, service, base, mfa_line)
    if text == current:
        return Outcome(False, f"{path}: pam_mfa.so is already installed ({mode} mode)")
    backup, written = _backup_paths(backup_dir, service)
    if not backup.exists():
        _write_new(backup, current if not _is_marked(current) else base)
    _replace(path, text)
    _write_new(written, text, replace=True)
    return Outcome(True, f"{path}: pam_mfa.so installed ({mode} mode); the original is {backup}")


def remove(pam_dir: Path, service: str, backup_dir: Path) -> Outcome:
    path = pam_dir / service
    current = _read(path)
    backup, written = _backup_paths(backup_dir, service)
    if not _is_marked(current):
        return Outcome(False, f"{path}: `mfa pam install` had not added pam_mfa.so here")
    if written.exists() and backup.exists() and written.read_text() == current:
        _replace(path, backup.read_text(encoding="utf-8", errors="surrogateescape"))
        backup.unlink()
        written.unlink()
        return Outcome(True, f"{path}: pam_mfa.so removed; the file is as it was before")
    _replace(path, strip_marked(current))
    edited = written.exists()
    written.unlink(missing_ok=True)
    if not backup.exists():
        return Outcome(True, f"{path}: pam_mfa.so removed (no backup of the original was found)")
    why = (
        "the file was edited since install, and those edits are kept"
        if edited
        else "install's record of what it wrote is gone"
    )
    return Outcome(
        True,
        f"{path}: pam_mfa.so removed; {why}; the file as it was before install is still {backup}",
    )


def _backup_paths(backup_dir: Path, service: str) -> tuple[Path, Path]:
    return backup_dir / service, backup_dir / f"{service}.installed"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise CliError(
            f"{path}: no such PAM service (is the program that uses it installed?)"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror} (run as root)") from None


def _write_new(path: Path, text: str, *, replace: bool = False) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` at once (a rename), keeping its mode and owner: a login
    that reads the file mid-write sees the old stack or the new one, never half."""
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ the commands

_pam_dir = click.option(
    "--pam-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_PAM_DIR,
    show_default=True,
    help="Where the PAM service files are.",
)
_backup_dir = click.option(
    "--backup-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_BACKUP_DIR,
    show_default=True,
    help="Where the original of each edited file is kept.",
)


@click.group(
    name="pam",
    short_help="Add pam_mfa.so to a PAM service, or take it out (root).",
    epilog="""\b
Examples:
  mfa pam install sshd             password, then code (after @include common-auth)
  mfa pam install sshd --mode key  public key, then code (see the README: sshd
                                   needs AuthenticationMethods
                                   publickey,keyboard-interactive)
  mfa pam install sudo             sudo asks for the code after the password
  mfa pam remove sshd              the file as it was before, byte for byte
  mfa doctor                       check what is in force""",
)
def pam() -> None:
    """Edit /etc/pam.d so a service asks for the code where it cannot be bypassed.

    Writes only a stack `mfa doctor` accepts, keeps the original, and is idempotent.
    """


@pam.command(
    name="install",
    epilog="""\b
Examples:
  mfa pam install sshd               password, then code
  mfa pam install sshd --mode key    public key, then code (see the README first)
  mfa pam install sudo
""",
)
@click.argument("service")
@click.option(
    "--mode",
    type=click.Choice(["password", "key"]),
    default="password",
    show_default=True,
    help="password: the code after the password check. key (sshd only): the code after "
    "sshd's public key check, the password lines switched off, pam_permit.so after "
    "pam_mfa.so so that users who need no code get in on the key.",
)
@click.option(
    "--module",
    default=pamstack.MODULE,
    show_default=True,
    help="The module as the PAM line names it (a path, for a module outside the PAM module "
    "directory).",
)
@click.option(
    "--module-arg",
    "module_args",
    multiple=True,
    metavar="ARG",
    help="An argument for pam_mfa.so, e.g. socket=/run/mfad/pam.sock or fail=open; repeatable.",
    callback=lambda _ctx, _param, value: _plain_words(value),
)
@_pam_dir
@_backup_dir
def install_command(
    service: str,
    mode: str,
    module: str,
    module_args: tuple[str, ...],
    pam_dir: Path,
    backup_dir: Path,
) -> None:
    """Add pam_mfa.so to SERVICE's auth stack (a file in /etc/pam.d)."""
    try:
        outcome = install(pam_dir, service, mode, module, module_args, backup_dir)
    except pamstack.StackError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise _unwritable(exc) from None
    except InstallRefused as exc:
        for finding in exc.reasons:
            click.echo(f"- {safe(finding.message)}\n  fix: {safe(finding.fix)}", err=True)
        raise
    click.echo(safe(outcome.message))


@pam.command(
    name="remove",
    epilog="""\b
Examples:
  mfa pam remove sshd    the file as it was before `mfa pam install sshd`
""",
)
@click.argument("service")
@_pam_dir
@_backup_dir
def remove_command(service: str, pam_dir: Path, backup_dir: Path) -> None:
    """Take out what `mfa pam install` added to SERVICE; the file as it was before."""
    try:
        outcome = remove(pam_dir, service, backup_dir)
    except OSError as exc:
        raise _unwritable(exc) from None
    click.echo(safe(outcome.message))


def _plain_words(values: tuple[str, ...]) -> tuple[str, ...]:
    """A module argument libpam reads as one: no blank (it splits there), no `#` (a
    comment from there on), no bracket (its quoting), nothing unprintable."""
    for value in values:
        if not value or any(c in value for c in " \t#[]") or not value.isprintable():
            raise click.BadParameter(
                f"{value!r}: a module argument may hold no blank, `#`, bracket or control character"
            )
    return values


def _unwritable(exc: OSError) -> CliError:
    return CliError(f"cannot write {exc.filename}: {exc.strerror} (run as root)")

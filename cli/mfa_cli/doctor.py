"""`mfa doctor`: is this machine's second factor in force, and where can it be bypassed?

Each check ends OK, WARN or FAIL, with a one-line fix for the last two; the command
exits 1 if any check FAILs. Run as root: it asks mfad (the `health` and `list` ops,
administrators only), reads the files mfad uses, the PAM service files (through
mfa_cli.pamstack, the judgement `mfa pam install` writes by) and sshd's effective
settings (mfa_cli.sshdconf: `sshd -T`, once for everyone and once per local user, so
that `Match` blocks count), and asks mfa_cli.clocksync about the clock. Every path it
reads can be given as an option, so that tests never touch the machine's own files; the
defaults are the real system's.

The checks, in the order printed:

    daemon          mfad answers, and its version
    key             the key file on disk is the key the store's secrets were sealed with
    files.*         owners and modes of the key, config, store, audit log, sealing key,
                    mail password and the three sockets
    pam.SERVICE     pam_mfa.so in each service's auth stack where it cannot be bypassed
    sshd.pam        sshd runs PAM with a conversation (UsePAM, KbdInteractiveAuthentication)
    sshd.methods    AuthenticationMethods: which deployment is in force, who gets in without
                    a code (a key alone, a password the code prompt swallows)
    clock.sync      the system clock is synchronised (timedatectl, chronyc or ntpq)
    clock.offsets   the spread of users' phone clock offsets mfad has seen
"""

from __future__ import annotations

import functools
import stat
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from mfa_cli import __version__, clocksync, pamstack, sshdconf
from mfa_cli.client import DaemonClient, pass_client
from mfa_cli.display import json_text, safe
from mfa_cli.errors import CliError, DaemonUnreachable
from mfa_wire import services as pam_services

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DEFAULT_CONFIG = Path("/etc/mfad/mfad.yaml")
DEFAULT_SSHD = Path("/usr/sbin/sshd")
DEFAULT_SSHD_CONFIG = Path("/etc/ssh/sshd_config")
DEFAULT_SERVICES = ("sshd", "login", "sudo", "su", "su-l")
MODULE_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/security"),
    Path("/lib/x86_64-linux-gnu/security"),
    Path("/usr/lib64/security"),
    Path("/lib64/security"),
    Path("/usr/lib/security"),
    Path("/lib/security"),
)
SETUP = "see the README, 'Requiring a code for SSH logins'"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    summary: str
    fix: str = ""


@dataclass(slots=True)
class Settings:
    """What mfad runs with: its `health` answer, else read from the config file."""

    mode: str = "optional"
    services: dict[str, str] = field(default_factory=dict)
    pam_socket: str = "/run/mfad/pam.sock"
    pam_user_socket: str = ""  # "": beside pam_socket (mfad's default)
    control_socket: str = "/run/mfad/control.sock"
    store_backend: str = "sqlite"
    store_path: str = "/var/lib/mfad/mfad.db"
    store_password_file: str = ""
    smtp_password_file: str = ""
    audit_seal_key: str = "/var/lib/mfad/audit-seal.key"
    key_file: str = "/etc/mfad/secret.key"
    audit_path: str = "/var/log/mfad/audit.jsonl"
    totp_window: int = 1
    totp_period: int = 30

    def mode_for(self, service: str) -> str:
        return pam_services.mode_for(self.services, service, self.mode)


@dataclass(slots=True)
class Doctor:
    client: DaemonClient
    config_path: Path
    pam_dir: Path
    sshd: Path
    sshd_config: Path
    services: tuple[str, ...]
    settings: Settings = field(default_factory=Settings)
    health: dict[str, Any] | None = None
    accounts: list[dict[str, Any]] | None = None
    pam_reports: dict[str, pamstack.Report] = field(default_factory=dict)

    def run(self) -> list[Check]:
        checks = [self.daemon()]
        checks += self.load_settings()
        checks.append(self.key())
        checks += _guarded("files", self.files)
        for service in self.service_names():
            checks += _guarded(f"pam.{service}", functools.partial(self.pam_checks, service))
        if "sshd" in self.service_names():
            checks += _guarded("sshd", self.sshd_checks)
        checks.append(clock_sync())
        checks.append(self.clock_offsets())
        return checks

    # --- mfad ---

    def daemon(self) -> Check:
        try:
            self.health = self.client.request("health")
        except DaemonUnreachable as exc:
            return Check(
                "daemon",
                FAIL,
                str(exc),
                "start it (`systemctl start mfad`); `mfad --check-config` and its log say "
                "why it does not start",
            )
        except CliError as exc:
            return Check("daemon", FAIL, str(exc.message), "run `mfa doctor` as root")
        try:
            self.accounts = [row for part in self.client.stream("list") for row in part["accounts"]]
        except CliError:
            self.accounts = None
        version = self.health.get("version")
        pid = self.health.get("pid")
        where = f"mfad {version} answers on {self.client.socket_path} (pid {pid})"
        if version != __version__:
            return Check(
                "daemon",
                WARN,
                f"{where}; this mfa is {__version__}",
                "install one version of both (`bash scripts/install.sh`) and restart mfad",
            )
        return Check("daemon", OK, where)

    def load_settings(self) -> list[Check]:
        if self.health is not None:
            config = self.health.get("config") or {}
            known = {k: v for k, v in config.items() if k in Settings.__dataclass_fields__}
            self.settings = Settings(**known)
            return []
        try:
            self.settings = settings_from_file(self.config_path)
        except (OSError, yaml.YAMLError, ValueError) as exc:
            return [
                Check(
                    "config",
                    FAIL,
                    f"cannot read {self.config_path}: {exc}",
                    f"`mfad --check-config --config {self.config_path}` says what is wrong",
                )
            ]
        return [Check("config", OK, f"mfad is down: settings read from {self.config_path}")]

    def key(self) -> Check:
        if self.health is None:
            return Check(
                "key",
                WARN,
                "not checked against the store: mfad is not running",
                "start mfad; if it refuses the key file, restore the original one",
            )
        message = str(self.health.get("key_message", ""))
        if self.health.get("key_check") == "ok":
            return Check("key", OK, message)
        return Check(
            "key", FAIL, message, f"restore the original {self.settings.key_file} from your backup"
        )

    # --- files ---

    def files(self) -> list[Check]:
        s = self.settings
        key = Path(s.key_file)
        config = self.config_path
        groups: list[tuple[str, list[Problem]]] = [
            ("files.key", [*_file(key, secret=True), *_directory(key.parent)]),
            ("files.config", [*_file(config, secret=False), *_directory(config.parent)]),
        ]
        if s.store_backend == "sqlite":
            store = Path(s.store_path)
            found = list(_file(store, secret=True))
            for extra in ("-wal", "-shm"):
                side = store.with_name(store.name + extra)
                if side.exists():
                    found += _file(side, secret=True)
            groups.append(("files.store", [*found, *_directory(store.parent)]))
        elif s.store_password_file:
            groups.append(("files.store", list(_file(Path(s.store_password_file), secret=True))))
        audit = Path(s.audit_path)
        groups.append(("files.audit", [*_file(audit, secret=False), *_directory(audit.parent)]))
        # the sealing key (only once `mfa audit seal-init` made it) and the mail password:
        # secrets like the key file
        seal = Path(s.audit_seal_key)
        if seal.exists():
            groups.append(("files.seal_key", list(_file(seal, secret=True))))
        if s.smtp_password_file:
            groups.append(("files.smtp", list(_file(Path(s.smtp_password_file), secret=True))))
        user_socket = Path(s.pam_user_socket or Path(s.pam_socket).with_name("pam-user.sock"))
        groups.append(
            (
                "files.sockets",
                list(_sockets(Path(s.pam_socket), Path(s.control_socket), user_socket)),
            )
        )
        checks = []
        for name, problems in groups:
            worst = max((p.status for p in problems), key=_rank, default=OK)
            if worst == OK:
                checks.append(Check(name, OK, _paths_summary(name, s, config)))
            else:
                shown = [p for p in problems if p.status == worst]
                checks.append(
                    Check(
                        name,
                        worst,
                        "; ".join(p.summary for p in shown),
                        "; ".join(dict.fromkeys(p.fix for p in shown)),
                    )
                )
        return checks

    # --- PAM ---

    def service_names(self) -> list[str]:
        names = list(self.services or DEFAULT_SERVICES)
        if not self.services:
            names += [s for s in self.settings.services if s not in names]
        return names

    def pam_checks(self, service: str) -> list[Check]:
        return [self.pam(service)]

    def pam(self, service: str) -> Check:
        name = f"pam.{service}"
        path = self.pam_dir / service
        configured = service in self.settings.services or (
            pam_services.SERVICE_VARIANTS.get(service) in self.settings.services
        )
        mode = self.settings.mode_for(service)
        if not path.exists():
            if configured and mode != "off":
                return Check(
                    name, WARN, f"mfad.yaml names {service}, but there is no {path}", "the name?"
                )
            return Check(name, OK, f"no {path}: no program here logs in through {service}")
        try:
            report = pamstack.analyse(self.pam_dir, service)
        except pamstack.StackError as exc:
            return Check(name, FAIL, str(exc), f"fix {path}: libpam refuses every login through it")
        self.pam_reports[service] = report
        if not report.mfa:
            if mode == "off":
                return Check(name, OK, f"no pam_mfa.so, and mfad.yaml says `{service}: off`")
            base = pam_services.SERVICE_VARIANTS.get(service)
            install = (
                f"`mfa pam install {base}` (Debian's {service} includes {base}) or "
                f"`mfa pam install {service}`"
                if base
                else f"`mfa pam install {service}`"
            )
            return Check(
                name,
                FAIL if configured else WARN,
                f"pam_mfa.so is not in {path}'s auth stack: {service} logins ask for no code",
                f"{install}, or `services: {{{service}: off}}` in mfad.yaml to say it is meant",
            )
        minor = (pamstack.Problem.TWICE, pamstack.Problem.AFTER_FAILED_CHECK)
        bad = [f for f in report.findings if f.problem not in minor]
        if bad:
            return Check(name, FAIL, bad[0].message, bad[0].fix)
        if report.mode == "key" and service != "sshd":
            return Check(
                name,
                FAIL,
                f"{service} asks for a code but for no password: the code alone lets anyone in",
                f"`mfa pam remove {service}` then `mfa pam install {service}` (password mode)",
            )
        line = report.mfa[0]
        problem = self._module_problem(line)
        if problem is not None:
            return problem
        if report.findings:
            return Check(name, WARN, report.findings[0].message, report.findings[0].fix)
        kind = "after the password" if report.mode == "password" else "after sshd's key check"
        off = " (mfad.yaml: mode off here)" if mode == "off" else ""
        return Check(name, OK, f"{line}: {kind}, cannot be bypassed{off}")

    def _module_problem(self, line: pamstack.Line) -> Check | None:
        name = f"pam.{line.file.name}"
        args = dict(arg.partition("=")[::2] for arg in line.args)
        socket = args.get("socket", "/run/mfad/pam.sock")
        if socket != self.settings.pam_socket:
            return Check(
                name,
                FAIL,
                f"{line} asks {socket}, but mfad listens on {self.settings.pam_socket}",
                f"give the line socket={self.settings.pam_socket}",
            )
        module = _module_file(line.module)
        if module is None:
            return Check(
                name,
                FAIL,
                f"{line}: there is no {line.module} in the PAM module directory; every login "
                "through it fails",
                "install it with `bash scripts/install.sh`",
            )
        st = module.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return Check(
                name,
                FAIL,
                f"{module} can be replaced by someone other than root "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                f"chown root: {module} && chmod 644 {module}",
            )
        if args.get("fail") == "open":
            return Check(
                name,
                WARN,
                f"{line}: fail=open lets everyone in on the password alone while mfad is down",
                "drop fail=open unless that is what you want",
            )
        return None

    # --- sshd ---

    def sshd_checks(self) -> list[Check]:
        if not self.sshd.exists():
            return [Check("sshd", OK, f"no {self.sshd}: no SSH server here")]
        try:
            base = self._sshd_settings(sshdconf.PROBE_USER)
        except CliError as exc:
            return [Check("sshd", FAIL, str(exc.message), "`sshd -t` says what is wrong")]
        report = self.pam_reports.get("sshd")
        stack = report.mode if report is not None else None
        if self.settings.mode_for("sshd") == "off" or stack is None:
            return [
                Check(
                    "sshd.methods",
                    OK if self.settings.mode_for("sshd") == "off" else WARN,
                    f"no code over SSH ({'mode off' if stack else 'pam_mfa.so not in sshd'}); "
                    + sshdconf.deployment(base, stack),
                    "" if self.settings.mode_for("sshd") == "off" else "`mfa pam install sshd`",
                )
            ]
        checks = [_pam_settings(base)]
        checks.append(self._methods(base, stack))
        return checks

    def _sshd_settings(self, user: str) -> dict[str, str]:
        try:
            return sshdconf.effective(self.sshd, self.sshd_config, user)
        except sshdconf.SshdError as exc:
            raise CliError(str(exc)) from None

    def _methods(self, base: dict[str, str], stack: str) -> Check:
        bad = sshdconf.without_code(base, stack)
        deployment = sshdconf.deployment(base, stack)
        if bad:
            return Check(
                "sshd.methods",
                FAIL,
                f"for every user: {bad} ({deployment})",
                _methods_fix(stack),
            )
        states = {str(a.get("user")): str(a.get("state")) for a in self.accounts or []}
        must: list[str] = []
        may: list[str] = []
        exempt: list[str] = []
        for user in sshdconf.local_users():
            try:
                own = self._sshd_settings(user)
            except CliError:
                continue
            if all(own.get(key) == base.get(key) for key in sshdconf.METHOD_SETTINGS):
                continue
            why = sshdconf.without_code(own, stack)
            if not why:
                continue
            state = states.get(user)
            if state == "exempt":
                exempt.append(user)
            elif state in ("active", "pending") or self.settings.mode_for("sshd") == "required":
                must.append(f"{user} ({why})")
            else:
                may.append(f"{user} ({why})")
        if must:
            return Check(
                "sshd.methods",
                FAIL,
                f"{deployment}; but a Match block lets in without a code users who must give "
                f"one: {', '.join(must)}",
                "take them out of that Match block, or `mfa exempt USER --reason ...` if "
                "they are service accounts",
            )
        if may:
            return Check(
                "sshd.methods",
                WARN,
                f"{deployment}; a Match block lets in without a code: {', '.join(may)}",
                "`mfa exempt USER --reason 'service account'` to record that it is meant",
            )
        if exempt:
            deployment += f"; a Match block for exempt service accounts: {', '.join(exempt)}"
        if stack == "password" and "password" in sshdconf.methods_used(base):
            return Check(
                "sshd.methods",
                WARN,
                f"{deployment}; sshd's password method answers the code prompt with the "
                "password: enrolled users cannot log in that way, and each try counts as a "
                "wrong code",
                "PasswordAuthentication no",
            )
        return Check("sshd.methods", OK, deployment)

    # --- clock ---

    def clock_offsets(self) -> Check:
        if self.accounts is None:
            return Check("clock.offsets", WARN, "not checked: mfad is not running", "start mfad")
        seen = [
            (str(a["user"]), int(a["clock_offset_steps"]))
            for a in self.accounts
            if a.get("state") == "active"
            and a.get("last_verified_at")
            and isinstance(a.get("clock_offset_steps"), int)
        ]
        if not seen:
            return Check("clock.offsets", OK, "no verified logins yet to compare clocks with")
        steps = [s for _, s in seen]
        period = self.settings.totp_period
        spread = (
            f"phone clocks {min(steps):+d} to {max(steps):+d} steps ({period} s) off, "
            f"{len(seen)} users"
        )
        middle = statistics.median(steps)
        if middle != 0:
            return Check(
                "clock.offsets",
                WARN,
                f"{spread}: most are {middle:+g} steps off, so this host's clock is likely wrong",
                "synchronise this host's clock (NTP)",
            )
        edge = [u for u, s in seen if abs(s) >= max(self.settings.totp_window, 1)]
        if edge:
            return Check(
                "clock.offsets",
                WARN,
                f"{spread}; at the edge of totp.window: {', '.join(edge[:10])}",
                "ask them to set their phone's clock to automatic",
            )
        return Check("clock.offsets", OK, spread)


@dataclass(frozen=True, slots=True)
class Problem:
    status: str
    summary: str
    fix: str


def _guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    """`check`'s results; a file it may not read is a WARN that says to run as root."""
    try:
        return check()
    except PermissionError as exc:
        return [Check(name, WARN, f"cannot look: {exc}", "run `mfa doctor` as root")]


def _rank(status: str) -> int:
    return {OK: 0, WARN: 1, FAIL: 2}[status]


def _file(path: Path, *, secret: bool) -> Iterator[Problem]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        yield Problem(FAIL if secret else WARN, f"{path} is missing", f"see the README for {path}")
        return
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        yield Problem(FAIL, f"{path} is not a regular file", f"replace {path} with a file")
    if st.st_uid != 0:
        yield Problem(FAIL, f"{path} is owned by uid {st.st_uid}", f"chown root: {path}")
    if mode & 0o022:
        yield Problem(FAIL, f"{path} is writable by others (mode {mode:04o})", f"chmod go-w {path}")
    if secret and mode & 0o077:
        yield Problem(FAIL, f"{path} is readable by others (mode {mode:04o})", f"chmod 600 {path}")


def _directory(path: Path) -> Iterator[Problem]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0 or mode & 0o022:
        yield Problem(
            FAIL,
            f"{path}/ can be changed by someone other than root (uid {st.st_uid}, mode {mode:04o})",
            f"chown root: {path} && chmod go-w {path}",
        )


def _sockets(pam: Path, control: Path, user: Path) -> Iterator[Problem]:
    for path, private in ((pam, True), (control, False), (user, False)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            yield Problem(WARN, f"no {path} (mfad is not running?)", "start mfad")
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != 0:
            yield Problem(
                FAIL, f"{path} is not a socket owned by root", "restart mfad: it makes its sockets"
            )
        elif private and mode & 0o077:
            yield Problem(
                FAIL,
                f"{path} is open to others (mode {mode:04o}): any user could pose as a login",
                f"chmod 600 {path}, and find out what changed it",
            )
        elif not private and mode & 0o006 != 0o006:
            cannot = (
                "screen lockers cannot check their user's code"
                if path == user
                else "users cannot run `mfa enroll` or `mfa status`"
            )
            yield Problem(
                WARN,
                f"{path} is mode {mode:04o}: {cannot}",
                f"chmod 666 {path} (each request is authorised by the caller's uid)",
            )
        yield from _directory(path.parent)


def _paths_summary(name: str, s: Settings, config: Path) -> str:
    return {
        "files.key": f"{s.key_file}: root, 0600",
        "files.config": f"{config}: root, not writable by others",
        "files.store": f"{s.store_path if s.store_backend == 'sqlite' else s.store_password_file}"
        ": root, not readable by others",
        "files.audit": f"{s.audit_path}: root, not writable by others",
        "files.sockets": f"{s.pam_socket} 0600, {s.control_socket} and the user PAM socket: root",
        "files.seal_key": f"{s.audit_seal_key}: root, 0600",
        "files.smtp": f"{s.smtp_password_file}: root, 0600",
    }[name]


def _module_file(module: str) -> Path | None:
    if module.startswith("/"):
        return Path(module) if Path(module).exists() else None
    for directory in MODULE_DIRS:
        if (directory / module).exists():
            return directory / module
    return None


def settings_from_file(path: Path) -> Settings:
    """The few settings `mfa doctor` needs, from mfad.yaml when mfad cannot be asked.
    (mfad validates the file; this only reads it.)"""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError("not a mapping of settings")

    def get(section: str, key: str, default: Any) -> Any:
        part = raw.get(section) or {}
        return part.get(key, default) if isinstance(part, dict) else default

    s = Settings()
    return Settings(
        mode=raw.get("mode", s.mode),
        services=dict(raw.get("services") or {}),
        pam_socket=get("sockets", "pam", s.pam_socket),
        pam_user_socket=get("sockets", "pam_user", s.pam_user_socket) or "",
        control_socket=get("sockets", "control", s.control_socket),
        store_backend=get("store", "backend", s.store_backend),
        store_path=get("store", "path", s.store_path),
        store_password_file=get("store", "password_file", s.store_password_file),
        smtp_password_file=get("smtp", "password_file", s.smtp_password_file) or "",
        audit_seal_key=get("audit", "seal_key", s.audit_seal_key),
        key_file=raw.get("key_file", s.key_file),
        audit_path=get("audit", "path", s.audit_path),
        totp_window=get("totp", "window", s.totp_window),
        totp_period=get("totp", "period", s.totp_period),
    )


def _methods_fix(stack: str) -> str:
    if stack == "key":
        return (
            "AuthenticationMethods publickey,keyboard-interactive and PasswordAuthentication no "
            f"(key + code; {SETUP})"
        )
    return (
        "AuthenticationMethods keyboard-interactive (password + code) or "
        f"publickey,keyboard-interactive; a Match block for service accounts ({SETUP})"
    )


def _pam_settings(settings: dict[str, str]) -> Check:
    if settings.get("usepam") != "yes":
        return Check(
            "sshd.pam", FAIL, "UsePAM no: sshd never runs pam_mfa.so", f"UsePAM yes ({SETUP})"
        )
    if settings.get("kbdinteractiveauthentication") != "yes":
        return Check(
            "sshd.pam",
            FAIL,
            "KbdInteractiveAuthentication no: sshd cannot ask for the code",
            f"KbdInteractiveAuthentication yes ({SETUP})",
        )
    return Check("sshd.pam", OK, "UsePAM yes, KbdInteractiveAuthentication yes")


def clock_sync() -> Check:
    """Whether the system clock is synchronised, as timedatectl, chronyc or ntpq says."""
    verdict = clocksync.synchronised()
    if verdict is None:
        return Check(
            "clock.sync",
            WARN,
            "cannot tell whether the clock is synchronised (no answer from timedatectl, "
            "chronyc or ntpq)",
            "run an NTP client (chrony, systemd-timesyncd or ntpsec)",
        )
    synced, source = verdict
    if synced:
        return Check("clock.sync", OK, f"synchronised ({source})")
    return Check(
        "clock.sync",
        FAIL,
        f"not synchronised ({source}): codes drift out of totp.window",
        "enable NTP (`timedatectl set-ntp true`, or install chrony)",
    )


# --- the command ---


@click.command(short_help="Check that the second factor is in force and cannot be bypassed.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="mfad's config file (read when mfad does not answer; its mode and owner are checked).",
)
@click.option(
    "--pam-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/pam.d"),
    show_default=True,
    help="Where the PAM service files are.",
)
@click.option(
    "--sshd",
    "sshd",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SSHD,
    show_default=True,
    help="The sshd binary, run as `sshd -T`.",
)
@click.option(
    "--sshd-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SSHD_CONFIG,
    show_default=True,
    help="sshd's config file.",
)
@click.option(
    "--service",
    "services",
    multiple=True,
    help="A PAM service to check (repeatable); default: sshd, login, sudo, su, su-l and those "
    "named in mfad.yaml's services.",
)
@pass_client
def doctor(
    client: DaemonClient,
    as_json: bool,
    config_path: Path,
    pam_dir: Path,
    sshd: Path,
    sshd_config: Path,
    services: tuple[str, ...],
) -> None:
    """Check mfad, its files, the PAM stacks, sshd and the clock; exit 1 on any FAIL.

    \b
    Each check is OK, WARN or FAIL; a WARN or FAIL comes with a fix. Run as root.
    Examples:
      mfa doctor
      mfa doctor --json
      mfa doctor --service sshd --service sudo
    """
    checks = Doctor(client, config_path, pam_dir, sshd, sshd_config, services).run()
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        click.echo(json_text({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.status:<5} {c.name:<{width}}  {safe(c.summary)}")
            if c.fix:
                click.echo(f"{'':<5} {'':<{width}}  fix: {safe(c.fix)}")
    if failed:
        raise SystemExit(1)

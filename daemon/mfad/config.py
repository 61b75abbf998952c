"""mfad.yaml: load, validate, and explain what is wrong with line and key.

The file is parsed into YAML nodes first so every complaint can name the line
of the key it is about. Unknown keys are errors: a typo such as
``max_atempts`` must not silently fall back to a default on a login system.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mfa_wire import services as pam_services
from mfad.errors import ConfigError

DEFAULT_PATH = Path("/etc/mfad/mfad.yaml")
MODES = ("off", "optional", "required")
ALGORITHMS = ("SHA1", "SHA256", "SHA512")
SMTP_TLS = ("starttls", "implicit", "none")
NOTICES = (
    "disable",
    "reset",
    "exempt",
    "suspend",
    "lock",
    "lifetime_cap",
    "failures",
    "require",
    "resume",
    "unexempt",
    "unlock",
    "forget",
    "email_recovery",
    "self_enrol",
)
"""What `notify.events` may name: the administrators' actions (the control ops of the
same name), an account lock (`lock`: lockout.deny; `lifetime_cap`), a burst of wrong
answers for one user (`failures`), a lost device's recovery code mailed at a login
(`email_recovery`) and a suspended user enrolling anew (`self_enrol`). mfad.notify maps
audit records to these."""
DEFAULT_NOTICES = (*NOTICES[:7], "email_recovery", "self_enrol")


@dataclass(frozen=True, slots=True)
class TotpConfig:
    issuer: str = field(default_factory=socket.gethostname)
    window: int = 1
    digits: int = 6
    period: int = 30
    algorithm: str = "SHA1"


@dataclass(frozen=True, slots=True)
class HotpConfig:
    # counters after the last one used that a hardware token's code may be for (RFC 4226 7.4)
    look_ahead: int = 10


@dataclass(frozen=True, slots=True)
class LoginConfig:
    max_attempts: int = 3
    prompt_timeout: float = 120.0
    prompt: str = "Verification code: "


@dataclass(frozen=True, slots=True)
class LockoutConfig:
    """pam_faillock's vocabulary for the account lock, plus a per-source stage before it."""

    deny: int = 5  # consecutive wrong codes within fail_interval that lock the account
    fail_interval: float = 900.0
    unlock_time: float = 900.0  # 0: locked until an administrator unlocks
    even_deny_root: bool = False
    silent: bool = False  # do not tell the user that (or until when) they are locked
    # wrong codes from one remote host that block that host for the user: above
    # max_attempts (one bad conversation is a typo, not an attack), below deny
    source_deny: int = 4
    source_block_time: float = 900.0
    # wrong codes with no success in between that lock until an administrator unlocks,
    # across automatic unlocks (NIST SP 800-63B 5.2.2: at most 100); 0: no such cap
    lifetime_deny: int = 100
    delay: float = 1.0  # seconds before answering a wrong code; doubles per failure
    # keep below pam_mfa.so's timeout= (default 10 s), or the module gives up waiting
    max_delay: float = 8.0


@dataclass(frozen=True, slots=True)
class EnrolmentConfig:
    at_login: bool = True  # offer enrolment in the login conversation to users who must enrol
    grace_days: float = 14.0  # after first being required; 0: no deadline
    recovery_codes: int = 10


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """The mail server mfad sends through (mfad.mailer)."""

    host: str = ""  # "": no server; notify.admins then needs one
    port: int = 587
    tls: str = "starttls"  # starttls | implicit (port 465) | none (a loopback host only)
    ca_file: Path | None = None  # None: the system's CAs
    username: str = ""  # "": no AUTH
    password_file: Path | None = None  # with username: the password, one line, mode 0600
    timeout: float = 8.0  # the whole exchange: connect, TLS, every command
    sender: str = ""  # the From address; "": mfad@ and the host name


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Mail to administrators about what the audit trail records (mfad.notify)."""

    admins: tuple[str, ...] = ()  # empty: no notices
    events: tuple[str, ...] = DEFAULT_NOTICES
    batch_seconds: float = 60.0  # facts gathered into one message
    failure_burst: int = 10  # wrong answers for one user within batch_seconds


@dataclass(frozen=True, slots=True)
class EmailConfig:
    """The email method (mfad.emailcodes): a code mailed at each login. Off by default:
    NIST SP 800-63B does not accept email as an out-of-band authenticator."""

    enabled: bool = False
    deny_groups: tuple[str, ...] = ()  # members must use an authenticator (totp/hotp)
    domains: tuple[str, ...] = ()  # addresses must be in one of these; empty: any domain
    code_ttl: float = 300.0  # seconds a mailed code is good for
    digits: int = 6
    resend_interval: float = 60.0  # seconds before another login may mail this user again


@dataclass(frozen=True, slots=True)
class LostDeviceConfig:
    """What a user who lost their authenticator may do without an administrator."""

    # at the code prompt, typing `email` mails a one-time recovery code to the confirmed
    # address; it lets the user in once and suspends the account until they enrol again
    email_recovery: bool = False
    # a suspended user may enrol a new authenticator themselves (`mfa enroll`), which makes
    # them active again: the way back from an emailed recovery code or an admin's suspend
    self_enrol: bool = False
    # under mode: optional, a user may turn off their own MFA (`mfa disable` on themselves),
    # unless a require_groups group of theirs requires it; weakens the factor: off
    self_disable: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    mode: str = "optional"
    require_groups: tuple[str, ...] = ()
    exempt_groups: tuple[str, ...] = ()
    services: dict[str, str] = field(default_factory=dict)  # PAM service -> mode, overrides mode
    admin_group: str = ""
    pam_socket: Path = Path("/run/mfad/pam.sock")
    # for PAM programs that run as the user (screen lockers); None: pam-user.sock beside pam
    pam_user_socket_setting: Path | None = None
    control_socket: Path = Path("/run/mfad/control.sock")
    store_backend: str = "sqlite"
    store_path: Path = Path("/var/lib/mfad/mfad.db")  # sqlite
    store_dsn: str = ""  # postgresql: a libpq connection string, without the password
    store_password_file: Path | None = None  # postgresql: the password, one line, 0600
    key_file: Path = Path("/etc/mfad/secret.key")
    audit_path: Path = Path("/var/log/mfad/audit.jsonl")
    # a login that cannot be recorded is refused; false lets logins go on unrecorded
    audit_required: bool = True
    # the name every audit record carries as its host; "" is the system's host name
    audit_host: str = ""
    metrics_listen: str = ""  # a loopback HOST:PORT for Prometheus; "": no HTTP endpoint
    # the evolving sealing key (mfa audit seal-init creates it; absent: records unsealed)
    audit_seal_key: Path = Path("/var/lib/mfad/audit-seal.key")
    audit_seal_epoch: int = 900  # seconds per sealing epoch, fixed at seal-init
    audit_forward: str = "auto"  # copy each record to journald or syslog: auto|journald|syslog|off
    audit_forward_socket: Path | None = None  # that socket, if not the usual one
    max_connections: int = 1024
    totp: TotpConfig = field(default_factory=TotpConfig)
    hotp: HotpConfig = field(default_factory=HotpConfig)
    login: LoginConfig = field(default_factory=LoginConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    enrolment: EnrolmentConfig = field(default_factory=EnrolmentConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    lost_device: LostDeviceConfig = field(default_factory=LostDeviceConfig)

    @property
    def pam_user_socket(self) -> Path:
        return self.pam_user_socket_setting or self.pam_socket.with_name("pam-user.sock")

    def mode_for(self, service: str) -> str:
        """The mode for logins through PAM service `service` (mfa_wire.services)."""
        return pam_services.mode_for(self.services, service, self.mode)


# --- validators: each takes the raw YAML value and returns the typed one or raises ValueError ---


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}, got {value!r}")
        return value

    return check


def _seconds(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ValueError(f"must be a number of seconds from {lo:g} to {hi:g}, got {value!r}")
        return float(value)

    return check


def _choice(*options: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            raise ValueError(f"must be one of {', '.join(map(str, options))}, got {value!r}")
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of group names, got {value!r}")
    return tuple(value)


def _services(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"must map PAM service names to a mode, got {value!r}")
    for service, mode in value.items():
        if not isinstance(service, str) or mode not in MODES:
            raise ValueError(
                f"service {service!r} must map to one of {', '.join(MODES)}, got {mode!r}"
            )
    return dict(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    return value


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"([A-Za-z0-9][A-Za-z0-9._-]{0,252})?", value
    ):
        raise ValueError(
            "must be a host name (letters, digits, '.', '-', '_'; up to 253 characters) "
            "or empty for this machine's, "
            f"got {value!r}"
        )
    return value


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9464` or `[::1]:9464` as (host, port); ValueError unless loopback."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not ipaddress.ip_address(host).is_loopback:
            raise ValueError
        number = int(port)
    except ValueError:
        raise ValueError(
            f"must be a loopback address and port, as 127.0.0.1:9464 or [::1]:9464, got {listen!r}"
        ) from None
    if not 1 <= number <= 65535:
        raise ValueError(f"the port must be from 1 to 65535, got {number}")
    return host, number


def _loopback(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    split_listen(value)  # ValueError with what is wrong
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return Path(value)


def _optional_path(value: Any) -> Path | None:
    return None if value == "" else _path(value)


# an address as mfad writes it into an envelope: local@domain, nothing a header could
# be split at (no spaces, angle brackets, commas or control characters)
_ADDRESS = re.compile(r"[^@\s<>,;\"()\[\]\\]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value) or not value.isprintable():
        raise ValueError(f"must be an email address such as mfad@example.com, got {value!r}")
    return value


def _optional_address(value: Any) -> str:
    return "" if value == "" else _address(value)


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of email addresses, got {value!r}")
    return tuple(dict.fromkeys(_address(v) for v in value))


def _domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _ADDRESS.fullmatch(f"x@{v}") for v in value
    ):
        raise ValueError(f"must be a list of mail domains such as example.com, got {value!r}")
    return tuple(v.lower() for v in value)


def _notices(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of notice names ({', '.join(NOTICES)}), got {value!r}")
    unknown = [v for v in value if v not in NOTICES]
    if unknown:
        raise ValueError(f"unknown notice {unknown[0]!r}; choose from {', '.join(NOTICES)}")
    return tuple(dict.fromkeys(value))


def _mail_host(value: Any) -> str:
    if value == "":
        return ""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(value)
            return value
        with contextlib.suppress(ValueError):
            return _host_name(value)
    raise ValueError(
        f"must be the mail server's host name or IP address, or empty for none, got {value!r}"
    )


def is_loopback(host: str) -> bool:
    """A name or address that never leaves this machine (RFC 6761 for `localhost`)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# key path in the file -> (Config attribute path, validator)
_SCHEMA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "mode": ("mode", _choice(*MODES)),
    "require_groups": ("require_groups", _names),
    "exempt_groups": ("exempt_groups", _names),
    "services": ("services", _services),
    "admin_group": ("admin_group", _text),
    "max_connections": ("max_connections", _int(16, 65536)),
    "sockets.pam": ("pam_socket", _path),
    "sockets.pam_user": ("pam_user_socket_setting", _optional_path),
    "sockets.control": ("control_socket", _path),
    "store.backend": ("store_backend", _choice("sqlite", "postgresql")),
    "store.path": ("store_path", _path),
    "store.dsn": ("store_dsn", _text),
    "store.password_file": ("store_password_file", _optional_path),
    "key_file": ("key_file", _path),
    "audit.path": ("audit_path", _path),
    "audit.required": ("audit_required", _bool),
    "audit.host": ("audit_host", _host_name),
    "metrics.listen": ("metrics_listen", _loopback),
    "audit.seal_key": ("audit_seal_key", _path),
    "audit.seal_epoch": ("audit_seal_epoch", _int(1, 86400)),
    "audit.forward": ("audit_forward", _choice("auto", "journald", "syslog", "off")),
    "audit.forward_socket": ("audit_forward_socket", _optional_path),
    "totp.issuer": ("totp.issuer", _text),
    "totp.window": ("totp.window", _int(0, 10)),
    "totp.digits": ("totp.digits", _choice(6, 8)),
    "totp.period": ("totp.period", _choice(30, 60)),
    "totp.algorithm": ("totp.algorithm", _choice(*ALGORITHMS)),
    "hotp.look_ahead": ("hotp.look_ahead", _int(1, 100)),
    "login.max_attempts": ("login.max_attempts", _int(1, 10)),
    "login.prompt_timeout": ("login.prompt_timeout", _seconds(1, 3600)),
    "login.prompt": ("login.prompt", _text),
    "enrolment.at_login": ("enrolment.at_login", _bool),
    "enrolment.grace_days": ("enrolment.grace_days", _seconds(0, 3650)),
    "enrolment.recovery_codes": ("enrolment.recovery_codes", _int(0, 100)),
    "lockout.deny": ("lockout.deny", _int(1, 1000)),
    "lockout.fail_interval": ("lockout.fail_interval", _seconds(1, 7 * 86400)),
    "lockout.unlock_time": ("lockout.unlock_time", _seconds(0, 7 * 86400)),
    "lockout.even_deny_root": ("lockout.even_deny_root", _bool),
    "lockout.silent": ("lockout.silent", _bool),
    "lockout.source_deny": ("lockout.source_deny", _int(1, 1000)),
    "lockout.lifetime_deny": ("lockout.lifetime_deny", _int(0, 100)),
    "lockout.source_block_time": ("lockout.source_block_time", _seconds(1, 7 * 86400)),
    "lockout.delay": ("lockout.delay", _seconds(0, 60)),
    "lockout.max_delay": ("lockout.max_delay", _seconds(0, 600)),
    "smtp.host": ("smtp.host", _mail_host),
    "smtp.port": ("smtp.port", _int(1, 65535)),
    "smtp.tls": ("smtp.tls", _choice(*SMTP_TLS)),
    "smtp.ca_file": ("smtp.ca_file", _optional_path),
    "smtp.username": ("smtp.username", _text),
    "smtp.password_file": ("smtp.password_file", _optional_path),
    "smtp.timeout": ("smtp.timeout", _seconds(1, 120)),
    "smtp.from": ("smtp.sender", _optional_address),
    "notify.admins": ("notify.admins", _addresses),
    "notify.events": ("notify.events", _notices),
    "notify.batch_seconds": ("notify.batch_seconds", _seconds(0.1, 3600)),
    "notify.failure_burst": ("notify.failure_burst", _int(2, 10000)),
    "email.enabled": ("email.enabled", _bool),
    "email.deny_groups": ("email.deny_groups", _names),
    "email.domains": ("email.domains", _domains),
    "email.code_ttl": ("email.code_ttl", _seconds(30, 3600)),
    "email.digits": ("email.digits", _int(6, 8)),
    "email.resend_interval": ("email.resend_interval", _seconds(0, 3600)),
    "lost_device.email_recovery": ("lost_device.email_recovery", _bool),
    "lost_device.self_enrol": ("lost_device.self_enrol", _bool),
    "lost_device.self_disable": ("lost_device.self_disable", _bool),
}
_SECTIONS = {key.split(".")[0] for key in _SCHEMA if "." in key}


def _flatten(node: yaml.Node, where: str, prefix: str = "") -> dict[str, tuple[Any, int]]:
    """Map 'section.key' -> (python value, 1-based line) for every scalar in the file."""
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where} line {node.start_mark.line + 1}: expected a mapping of keys")
    flat: dict[str, tuple[Any, int]] = {}
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if key in flat:
            raise ConfigError(f"{where} line {line}: {key}: given twice")
        if key in _SECTIONS and not prefix:
            flat.update(_flatten(value_node, where, f"{key}."))
            continue
        if key not in _SCHEMA:
            raise ConfigError(f"{where} line {line}: {key}: unknown setting")
        try:
            value = yaml.safe_load(yaml.serialize(value_node))
        except (yaml.YAMLError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # PyYAML's constructors raise more than YAMLError for odd tagged values
            # (`!!bool maybe` is a KeyError): every one of them is a bad value here.
            raise ConfigError(
                f"{where} line {line}: {key}: not a plain value ({type(exc).__name__}: {exc})"
            ) from None
        flat[key] = (value, line)
    return flat


def parse(text: str, where: str = "<config>") -> Config:
    """Validate config text; raise ConfigError naming the line and the key on any problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    flat = _flatten(root, where) if root is not None else {}
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {
        "totp": {},
        "hotp": {},
        "login": {},
        "lockout": {},
        "enrolment": {},
        "smtp": {},
        "notify": {},
        "email": {},
        "lost_device": {},
    }
    for key, (raw, line) in flat.items():
        attr, check = _SCHEMA[key]
        try:
            value = check(raw)
        except ValueError as exc:
            raise ConfigError(f"{where} line {line}: {key}: {exc}") from None
        section, _, name = attr.rpartition(".")
        (nested[section] if section else top)[name] = value
    if top.get("store_backend") == "postgresql" and not top.get("store_dsn"):
        line = flat["store.backend"][1]
        raise ConfigError(
            f"{where} line {line}: store.dsn: required with store.backend: postgresql (a "
            "libpq connection string such as 'host=db.example.com dbname=mfad user=mfad "
            "sslmode=verify-full'; the password goes in store.password_file)"
        )
    _check_mail(nested["smtp"], nested["notify"], flat, where)
    return Config(
        **top,
        totp=TotpConfig(**nested["totp"]),
        hotp=HotpConfig(**nested["hotp"]),
        login=LoginConfig(**nested["login"]),
        lockout=LockoutConfig(**nested["lockout"]),
        enrolment=EnrolmentConfig(**nested["enrolment"]),
        smtp=SmtpConfig(**nested["smtp"]),
        notify=NotifyConfig(**nested["notify"]),
        email=EmailConfig(**nested["email"]),
        lost_device=LostDeviceConfig(**nested["lost_device"]),
    )


def _check_mail(
    smtp: dict[str, Any], notify: dict[str, Any], flat: dict[str, tuple[Any, int]], where: str
) -> None:
    """The smtp settings that only make sense together."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where} line {flat[key][1]}: {key}: {message}")

    host = smtp.get("host", "")
    if smtp.get("tls") == "none" and not is_loopback(host):
        # on the network the mail (and any AUTH password) would go in clear text, and a
        # machine in the middle could read or drop every notice unseen
        raise fail(
            "smtp.tls",
            f"none is allowed only for a server on this machine (localhost, 127.0.0.1, ::1), "
            f"not {host or 'no host'!r}: use starttls (port 587) or implicit (port 465)",
        )
    if bool(smtp.get("username")) != bool(smtp.get("password_file")):
        given = "smtp.username" if smtp.get("username") else "smtp.password_file"
        raise fail(given, "smtp.username and smtp.password_file go together (AUTH needs both)")
    for key in ("email.enabled", "lost_device.email_recovery"):
        if key in flat and flat[key][0] is True and not host:
            raise fail(key, "needs smtp.host: the mail server mfad sends the codes through")
    if notify.get("admins") and not host:
        raise fail(
            "notify.admins",
            "needs smtp.host: the mail server mfad sends the notices through",
        )


def load(path: Path = DEFAULT_PATH) -> Config:
    """Read and validate the config file; a missing file is an error, not silent defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    return parse(text, str(path))


MODULE_TIMEOUT = 10.0  # pam_mfa.so's default timeout= (seconds per frame)


def warnings(cfg: Config) -> list[str]:
    """Valid but probably unintended settings, for the log and --check-config."""
    lock, found = cfg.lockout, []
    if "password" in cfg.store_dsn:
        found.append(
            "store.dsn carries a password, and mfad.yaml is readable by every local user: "
            "put it in store.password_file (mode 0600) instead"
        )
    if lock.source_deny <= cfg.login.max_attempts:
        found.append(
            f"lockout.source_deny ({lock.source_deny}) is not above login.max_attempts "
            f"({cfg.login.max_attempts}): one mistyped login blocks the user's host"
        )
    if lock.source_deny >= lock.deny:
        found.append(
            f"lockout.source_deny ({lock.source_deny}) is not below lockout.deny ({lock.deny}): "
            "a single guessing host can lock the account for everyone"
        )
    if lock.max_delay >= MODULE_TIMEOUT:
        found.append(
            f"lockout.max_delay ({lock.max_delay:g}s) reaches pam_mfa.so's default timeout "
            f"({MODULE_TIMEOUT:g}s): set the module's timeout= above it, or wrong codes end "
            "in 'unavailable'"
        )
    mails_at_login = cfg.email.enabled or cfg.lost_device.email_recovery
    if mails_at_login and cfg.smtp.timeout >= MODULE_TIMEOUT:
        found.append(
            f"smtp.timeout ({cfg.smtp.timeout:g}s) reaches pam_mfa.so's default timeout "
            f"({MODULE_TIMEOUT:g}s) and a login waits for the mail server to take its code: "
            "a slow server ends such logins in 'unavailable'; keep it below"
        )
    return found

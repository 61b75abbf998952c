"""Mail through an SMTP server: TLS verified, optional AUTH, bounded in time.

Used for the administrators' notices (notify.py), and meant for anything else
mfad mails. `Mailer.send` hands one plain-text message to the server named by
the config's ``smtp`` section or raises MailError saying what failed and what
to check; the message never holds the password.

- TLS: ``starttls`` (port 587: plain connect, then STARTTLS, which must be
  offered: a server, or a machine in between, that leaves it out is refused,
  never answered in clear text) or ``implicit`` (port 465: TLS from the first
  byte). The certificate must chain to ``smtp.ca_file`` if one is set (only
  to it: a private CA pins the server), else to the system's CAs, and must
  name ``smtp.host``. ``none`` is accepted by the config for a server on this
  machine only (a local MTA that relays onward with TLS of its own).
- AUTH: with ``smtp.username``, the password is read from
  ``smtp.password_file`` (mode 0600, owned by mfad's user, as
  ``store.password_file``) at every send, so a changed password needs no
  restart; never over a connection without TLS unless the server is local.
- Time: ``smtp.timeout`` bounds the whole exchange (connect, TLS, every
  command), whatever the server does, trickling bytes included.
- The event loop never waits: aiosmtplib speaks SMTP on it without blocking,
  and the two file reads (CA file, password) happen in a thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import aiosmtplib

from mfad.config import SmtpConfig
from mfad.errors import MailError

_REPLY_CHARS = 200  # of a server's reply quoted in an error: enough to act on


def default_sender() -> str:
    """The From address when ``smtp.from`` is empty."""
    return f"mfad@{socket.gethostname()}"


class Mailer:
    """Sends mail through the server the current config names (read at every send, so a
    reload applies to the next message)."""

    def __init__(self, settings: Callable[[], SmtpConfig]) -> None:
        self._settings = settings
        # TLS contexts by CA file and its modification time: loading the system's CAs
        # costs milliseconds, and a replaced CA file is read again
        self._contexts: dict[tuple[Path | None, int], ssl.SSLContext] = {}

    async def send(
        self, to: Sequence[str], subject: str, body: str, *, domain: str | None = None
    ) -> None:
        """Hand one message to the SMTP server; MailError if it was not accepted for every
        recipient. `domain` goes into the Message-ID (the host's name by default)."""
        cfg = self._settings()
        if not cfg.host:
            raise MailError("no mail server is configured: set smtp.host in mfad.yaml")
        server = f"the SMTP server {cfg.host}:{cfg.port}"
        context, password = await asyncio.to_thread(self._prepare, cfg)
        message = compose(cfg.sender or default_sender(), to, subject, body, domain)
        try:
            async with asyncio.timeout(cfg.timeout):
                await aiosmtplib.send(
                    message,
                    hostname=cfg.host,
                    port=cfg.port,
                    use_tls=cfg.tls == "implicit",
                    start_tls=cfg.tls == "starttls",  # required, never opportunistic
                    tls_context=context,
                    username=cfg.username or None,
                    password=password,
                    local_hostname=socket.gethostname(),  # getfqdn() would ask DNS
                    timeout=cfg.timeout,
                )
        except TimeoutError:  # aiosmtplib's own timeouts are TimeoutErrors too
            raise MailError(
                f"{server} did not complete the exchange within smtp.timeout "
                f"({cfg.timeout:g} s): check that it is up, that smtp.tls fits the port "
                "(465: implicit, 587: starttls) and that mfad may reach it (the systemd unit "
                "needs network access: README, Notifications)"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            trust = f"smtp.ca_file {cfg.ca_file}" if cfg.ca_file else "the system's CAs"
            raise MailError(
                f"{server} presented a certificate that does not verify against {trust} "
                f"for the name {cfg.host!r} ({exc.verify_message}); nothing was sent"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise MailError(_explain(exc, server, cfg)) from None

    def _prepare(self, cfg: SmtpConfig) -> tuple[ssl.SSLContext | None, str | None]:
        """The TLS context and the AUTH password (in a thread: both read files)."""
        context = None if cfg.tls == "none" else self._context(cfg.ca_file)
        password = None
        if cfg.username and cfg.password_file is not None:
            password = read_password(cfg.password_file)
        return context, password

    def _context(self, ca_file: Path | None) -> ssl.SSLContext:
        try:
            version = ca_file.stat().st_mtime_ns if ca_file is not None else 0
        except OSError as exc:
            raise MailError(f"cannot read smtp.ca_file {ca_file}: {exc.strerror}") from None
        key = (ca_file, version)
        context = self._contexts.get(key)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise MailError(
                    f"cannot use smtp.ca_file {ca_file} as a CA bundle: {exc} (it must hold "
                    "PEM certificates)"
                ) from None
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._contexts = {key: context}  # only the current one is kept
        return context


def read_password(path: Path) -> str:
    """The AUTH password, from a file only mfad's user can read (like store.password_file)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise MailError(f"cannot read smtp.password_file {path}: {reason}") from None
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise MailError(
            f"{path} (smtp.password_file) must be owned by the daemon's user and mode 0600 "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); nothing was sent"
        )
    return text.strip("\n")


def compose(
    sender: str, to: Sequence[str], subject: str, body: str, domain: str | None = None
) -> EmailMessage:
    """A plain-text message marked as sent by a machine (RFC 3834: no auto-replies)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("mfad", domain=domain or socket.gethostname())
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body, charset="utf-8")
    return message


def _explain(exc: BaseException, server: str, cfg: SmtpConfig) -> str:
    """What failed, in words an administrator can act on."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, ssl.SSLError):
        hint = (
            ": is it a STARTTLS port (587)? then smtp.tls: starttls"
            if cfg.tls == "implicit"
            else ""
        )
        return f"TLS with {server} failed ({_reply(str(cause.reason or cause))}){hint}"
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return (
            f"{server} refused the login of smtp.username {cfg.username!r} "
            f"({exc.code} {_reply(exc.message)}): check the user and the password in "
            f"smtp.password_file"
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{r.recipient} ({r.code} {_reply(r.message)})" for r in exc.recipients)
        return f"{server} refused the recipients: {refused}: check notify.admins"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # 530: the server wants TLS or AUTH first; other refusals of the sender are
        # about the From address
        if exc.code == 530:
            hint = "check smtp.tls and smtp.username (the server wants TLS or a login)"
        elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
            hint = f"set smtp.from to an address it accepts (now {exc.sender})"
        else:
            hint = "its reply says why"
        return f"{server} refused the message ({exc.code} {_reply(exc.message)}): {hint}"
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return (
            f"cannot talk to {server} ({_reply(str(cause))}): check smtp.host, smtp.port and "
            "smtp.tls, and that mfad may reach it (the systemd unit needs network access: "
            "README, Notifications)"
        )
    if cfg.tls == "starttls" and "STARTTLS" in str(exc):
        return (
            f"{server} does not offer STARTTLS (or something between removed it), so nothing "
            "was sent: a server on port 465 needs smtp.tls: implicit"
        )
    # the server lacks something else the config asks for (AUTH over this connection)
    hint = "; a server on port 465 needs smtp.tls: implicit" if cfg.tls == "starttls" else ""
    return (
        f"{server} cannot do what mfad.yaml asks ({_reply(str(exc))}): check smtp.tls and "
        f"smtp.username{hint}; nothing was sent"
    )


def _reply(text: str) -> str:
    """A server's words, one line, bounded: they go into a log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _REPLY_CHARS else flat[:_REPLY_CHARS] + "…"

"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, with TLS from a test CA.

`TestCA` makes a certificate authority and server certificates for
127.0.0.1/localhost in a directory (the daemon trusts the CA through
``smtp.ca_file``). `SmtpServer` runs aiosmtpd in a thread of the test process
with STARTTLS required (or implicit TLS), optional AUTH against one user and
password, and keeps every message it accepted. It can be stopped and started
again on the same port, to play a mail server that goes away and comes back.
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class TestCA:
    """A CA of the test's own; `issue()` writes a server certificate and key it signed."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "pam-mfa test CA") -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 and localhost: (certificate, key) paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    """One message the server accepted: envelope and parsed content."""

    sender: str
    recipients: list[str]
    raw: str
    message: EmailMessage = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None, self.raw
        content: str = part.get_content()
        return content


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, _server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        parsed = email.message_from_string(text, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.server.lock:
            self.server.messages.append(
                Received(
                    str(envelope.mail_from),
                    [str(r) for r in envelope.rcpt_tos],
                    text,
                    parsed,
                )
            )
            self.server.tls_used.append(session.ssl is not None)
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1:`port`, in a thread, TLS with the given certificate (STARTTLS
    required; `implicit`: TLS from the first byte; `plain`: no TLS offered at all)."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        implicit: bool = False,
        plain: bool = False,
        auth: tuple[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.cert, self.key = cert, key
        self.implicit = implicit
        self.plain = plain  # no TLS at all: no STARTTLS offered
        self.auth = auth
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.tls_used: list[bool] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def _authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if (user, password) == self.auth:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> SmtpServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        options: dict[str, Any] = {}
        if self.implicit:
            options["ssl_context"] = context
        elif not self.plain:
            options.update(tls_context=context, require_starttls=True)
        if self.auth is not None:
            # with implicit TLS aiosmtpd does not count the session as encrypted (it
            # would offer no AUTH at all): there every byte is under TLS anyway
            options.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=not self.implicit,
            )
        self._controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="localhost",
            ready_timeout=10,
            **options,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """The messages once at least `count` have arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len(self.messages)} messages, not {count}: {self.messages}")

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)


@contextlib.contextmanager
def running_smtp(ca: TestCA) -> Iterator[SmtpServer]:
    """A mail server with a certificate from `ca`, STARTTLS required; stopped on leaving."""
    cert, key = ca.issue("smtp")
    server = SmtpServer(cert, key).start()
    try:
        yield server
    finally:
        server.stop()


def smtp_settings(ca: TestCA, port: int, timeout: float = 3) -> dict[str, Any]:
    """mfad.yaml's `smtp` section for the server on `port` that `ca` signed."""
    return {"host": "127.0.0.1", "port": port, "ca_file": str(ca.path), "timeout": timeout}

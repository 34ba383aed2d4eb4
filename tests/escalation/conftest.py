"""Escalation fixtures: real aiosmtpd servers on 127.0.0.1 (plain, STARTTLS, implicit TLS, AUTH)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rollbackd.daemon.config import Config, parse_config
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal

FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
SMTP_USER = "rollbackd"
SMTP_PASSWORD = "smtp-Pa55word-9c1f"  # the test secret that must never show up anywhere

CONTACTS = """\
[contacts.oncall]
emails = ["oncall@example.com"]

[contacts.dba]
emails = ["dba@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com"]

[contacts.emergency]
emails = ["cto@example.com"]
"""


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed certificate for 127.0.0.1 (its own CA), made with `cryptography`."""
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rollbackd test smtp")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(d / "cert.pem", d / "key.pem")
    files.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclass
class Delivery:
    rcpts: list[str]
    msg: EmailMessage
    raw: bytes
    user: str | None


@dataclass
class Mailbox:
    """The handler: keeps what it accepts; can refuse chosen recipients a number of times."""

    require_auth: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.refuse.get(address, 0) > 0:
            self.refuse[address] -= 1
            return "451 4.2.2 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.content)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        user = session.auth_data.login.decode() if session.auth_data else None
        self.deliveries.append(Delivery(list(envelope.rcpt_tos), msg, raw, user))
        return "250 OK"

    def pairs(self) -> list[tuple[str, str]]:
        """(recipient, Message-ID) for every copy delivered, in delivery order."""
        return [(r, str(d.msg["Message-ID"])) for d in self.deliveries for r in d.rcpts]

    def to(self, address: str) -> list[EmailMessage]:
        return [d.msg for d in self.deliveries if address in d.rcpts]


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
          and auth_data.password == SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


Mode = Literal["plain", "starttls", "tls"]


class MailServer:
    """A real SMTP server on a fixed loopback port that a test can stop and start again."""

    def __init__(self, mode: Mode = "plain", cert: CertFiles | None = None,
                 port: int | None = None) -> None:
        self.mode = mode
        self.cert = cert
        self.port = port or free_port()
        self.box = Mailbox(require_auth=mode != "plain")
        self.controller: Controller | None = None

    def _server_context(self) -> ssl.SSLContext:
        assert self.cert is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert.cert, self.cert.key)
        return ctx

    def start(self) -> MailServer:
        kwargs: dict[str, Any] = {}
        if self.mode == "starttls":
            # AUTH only after STARTTLS (aiosmtpd's default), and no mail without both.
            kwargs = {"tls_context": self._server_context(), "require_starttls": True,
                      "authenticator": _authenticator, "auth_required": True}
        elif self.mode == "tls":
            # The whole session is TLS; aiosmtpd only counts STARTTLS as TLS for AUTH, so the
            # handler enforces authentication instead (handle_MAIL).
            kwargs = {"ssl_context": self._server_context(), "authenticator": _authenticator,
                      "auth_require_tls": False}
        self.controller = Controller(self.box, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def deliveries(self) -> list[Delivery]:
        return self.box.deliveries


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    """A plain SMTP server, not started: the test decides when it is up."""
    server = MailServer()
    yield server
    server.stop()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def config_text(port: int, *, smtp_extra: str = "", contacts: str = CONTACTS,
                escalation: str = "") -> str:
    return f"""\
[smtp]
host = "127.0.0.1"
port = {port}
from = "rollbackd@localhost"
timeout = "3s"
{smtp_extra}
{contacts}
[escalation]
{escalation}

[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
"""


def make_config(port: int, **kwargs: Any) -> Config:
    return parse_config(config_text(port, **kwargs))


def outbox_for(journal: Journal, port: int, **kwargs: Any) -> Outbox:
    return Outbox(journal, make_config(port, **kwargs))


def incident(journal: Journal, cls: str = "app_down", state: str = "open",
             reason: str = "health cannot connect", target: str = "web") -> int:
    return journal.incidents.open(target, cls, f"{cls}: {reason}", None, {}, state=state)

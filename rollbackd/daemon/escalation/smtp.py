"""The SMTP transport: plain, STARTTLS or implicit TLS, a private CA, auth from a secret file."""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any


class InsecureAuth(smtplib.SMTPException):
    """The password would cross the network in clear text; the mail waits instead."""


def tls_context(settings: Any) -> ssl.SSLContext:
    """Certificate and host name checks always on; `ca_file` adds trust in a private CA."""
    ca_file = getattr(settings, "ca_file", None)
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(settings: Any) -> smtplib.SMTP:
    """An open, logged-in SMTP session (the caller closes it; several mails may use it).

    `settings` is rollbackd.daemon.config.SmtpSettings (untyped here: config imports this
    package).
    """
    s = settings
    login = bool(s.username and s.password_file)
    if login and not (s.tls or s.starttls or _loopback(s.host)):
        # Checked before connecting: nothing of the password may leave in clear text.
        raise InsecureAuth(f"not sending the SMTP password to {s.host} without TLS; "
                           "set smtp.starttls or smtp.tls")
    if s.tls:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout,
                                              context=tls_context(s))
    else:
        smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
    try:
        if s.starttls:
            smtp.starttls(context=tls_context(s))
        if login:
            smtp.login(s.username, s.password_file.value)
    except BaseException:
        smtp.close()
        raise
    return smtp


def send(settings: Any, msg: EmailMessage, recipients: Sequence[str]
         ) -> tuple[dict[str, Any], smtplib.SMTP]:
    """Send one message and leave the session open: returns the recipients the server refused
    (empty: all accepted) and the session, for `close` once the caller has recorded the answer.

    The server has the message once it answers DATA with 250; a crash from then until the
    outbox marks it sent makes the outbox send it again (with the same Message-ID). QUIT is
    one more round trip the outbox need not wait for before marking it.

    Raises OSError or SMTPException when nothing was accepted (the session is closed then):
    the caller retries later.
    """
    smtp = connect(settings)
    try:
        return dict(smtp.send_message(msg, to_addrs=list(recipients))), smtp
    except BaseException:
        close(smtp)
        raise


def close(smtp: smtplib.SMTP) -> None:
    """End a session whose message the server has answered: QUIT, or drop the connection; the
    answer is already recorded, so nothing here can change what was sent."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()

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


def deliver(settings: Any, msg: EmailMessage, recipients: Sequence[str]) -> dict[str, Any]:
    """Send one message; returns the recipients the server refused (empty: all accepted).

    Raises OSError or SMTPException when nothing was accepted: the caller retries later.
    `settings` is rollbackd.daemon.config.SmtpSettings (untyped here: config imports this package).
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
    with smtp:
        if s.starttls:
            smtp.starttls(context=tls_context(s))
        if login:
            smtp.login(s.username, s.password_file.value)
        return dict(smtp.send_message(msg, to_addrs=list(recipients)))

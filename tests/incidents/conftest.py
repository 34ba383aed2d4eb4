"""The incident desk's tests share the escalation tests' real SMTP server."""

from tests.escalation.conftest import mail_server

__all__ = ["mail_server"]

"""Fixtures shared with other suites: the escalation tests' self-signed SMTP certificate."""

from tests.escalation.conftest import cert

__all__ = ["cert"]

"""The process clock: every timestamp the daemon records is an aware UTC datetime from here."""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)

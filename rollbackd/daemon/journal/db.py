"""The journal's one connection and its transaction helper, and how it stores timestamps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast


class JournalError(Exception):
    pass


def ts(value: datetime | None) -> str | None:
    """A timestamp as the journal keeps it: UTC ISO 8601 text, so text order is time order."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if value else None


def dt(value: str | None) -> datetime | None:
    """A stored timestamp back; one without an offset (written by hand) is taken as UTC."""
    if not value:
        return None
    at = datetime.fromisoformat(value)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class Database:
    """One connection shared by every repository of a journal, with its transaction helper.

    The connection is sqlite3's, or rollbackd/daemon/journal/pg.py's PgConnection offering the same
    surface (rows by name and index, `?` placeholders, BEGIN IMMEDIATE), so the repositories
    send one SQL to both backends.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = cast(sqlite3.Connection, conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front (on PostgreSQL
        an advisory lock), so writers take turns instead of failing halfway."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

"""The journal's one connection and its transaction helper, and how it stores timestamps."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
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
        self._depth = 0
        self._owner: object = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front (on PostgreSQL
        an advisory lock), so writers take turns instead of failing halfway.

        Reentrant: a `tx()` inside another of the same task joins it, so several repositories'
        writes (an incident's state and its mail) commit together or not at all. The inner block
        is a savepoint: an error it raises undoes its own writes, and the outer block decides
        whether to go on. The outermost block alone commits."""
        if self._depth and self._owner == _whose():
            yield from self._nested()
            return
        # From another task (or thread) while one is open, BEGIN fails as it always did: a
        # transaction is never joined across an await.
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth, self._owner = 1, _whose()
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # a COMMIT that failed leaves nothing half-written
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth, self._owner = 0, None

    def _nested(self) -> Iterator[sqlite3.Connection]:
        self._depth += 1
        name = f"tx{self._depth}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield self.conn
        except BaseException:
            with suppress(Exception):  # a lost connection: the outermost ROLLBACK says so
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self.conn.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._depth -= 1


def _whose() -> object:
    """Who runs this: the asyncio task, or the thread outside one."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return task if task is not None else threading.get_ident()

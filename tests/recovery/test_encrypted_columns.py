"""The key disaster's database half on real SQLite and PostgreSQL: every configured column set
to NULL in one transaction, or nothing at all."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollbackd.daemon.rollback.encrypted_columns import clear_postgres, clear_sqlite


def sqlite_db(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY, secret TEXT, note TEXT NOT NULL);
            CREATE TABLE cards (id INTEGER PRIMARY KEY, number TEXT);
            INSERT INTO users (secret, note) VALUES ('gAAA1', 'a'), (NULL, 'b'), ('gAAA3', 'c');
            INSERT INTO cards (number) VALUES ('gAAA9');
        """)
        db.commit()
    return path


def test_sqlite_columns_are_cleared_together(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path / "app.db")
    assert clear_sqlite(path, ["users.secret", "cards.number"], 5) == {
        "users.secret": 2, "cards.number": 1}
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM users WHERE secret IS NULL").fetchone() == (3,)
        assert db.execute("SELECT number FROM cards").fetchall() == [(None,)]
        assert db.execute("SELECT note FROM users ORDER BY id").fetchall() == [
            ("a",), ("b",), ("c",)]


def test_sqlite_failure_changes_nothing(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path / "app.db")
    with pytest.raises(sqlite3.IntegrityError):  # NOT NULL: the second column cannot be cleared
        clear_sqlite(path, ["users.secret", "users.note"], 5)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT secret FROM users ORDER BY id").fetchall() == [
            ("gAAA1",), (None,), ("gAAA3",)]


def test_postgres_columns_are_cleared_or_nothing(postgresql: psycopg.Connection[Any]) -> None:
    postgresql.execute("CREATE TABLE users (id serial PRIMARY KEY, secret text, "
                       "note text NOT NULL)")
    postgresql.execute("INSERT INTO users (secret, note) VALUES ('gAAA1', 'a'), ('gAAA2', 'b')")
    postgresql.commit()
    info = postgresql.info

    async def clear(columns: list[str]) -> dict[str, int]:
        conn = await psycopg.AsyncConnection.connect(
            host=info.host, port=info.port, user=info.user, dbname=info.dbname, autocommit=True)
        async with conn:
            return await clear_postgres(conn, columns)

    with pytest.raises(psycopg.errors.NotNullViolation):
        asyncio.run(clear(["users.secret", "users.note"]))
    assert postgresql.execute("SELECT count(*) FROM users WHERE secret IS NULL").fetchone() == (0,)
    assert asyncio.run(clear(["users.secret"])) == {"users.secret": 2}
    assert postgresql.execute("SELECT count(*) FROM users WHERE secret IS NULL").fetchone() == (2,)

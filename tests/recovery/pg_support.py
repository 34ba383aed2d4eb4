"""Helpers for tests against the fixtures' throwaway PostgreSQL: admin connections, databases by
name prefix, row counts, and a small app database that drops everything named after it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor


def admin(proc: PostgreSQLExecutor, db: str = "postgres", user: str | None = None
          ) -> psycopg.Connection[Any]:
    return psycopg.connect(host=proc.host, port=proc.port, user=user or proc.user, dbname=db,
                           autocommit=True)


def databases(proc: PostgreSQLExecutor, prefix: str) -> list[str]:
    with admin(proc) as c:
        return sorted(str(r[0]) for r in c.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)))


def rows(proc: PostgreSQLExecutor, db: str, table: str) -> int:
    with admin(proc, db) as c:
        row = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                        ).fetchone()
        return int(row[0]) if row else -1


@contextmanager
def app_database(proc: PostgreSQLExecutor, prefix: str, revision: str, users: int,
                 grades: int) -> Iterator[str]:
    """A fresh database with users, grades and alembic_version; every database named after it
    (restored, corrupted, snapshots, scratch) is dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    with admin(proc) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with admin(proc, name) as c:
        c.execute("CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL)")
        c.execute("CREATE TABLE grades (id serial PRIMARY KEY, user_id int REFERENCES users, "
                  "grade int NOT NULL)")
        c.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        c.execute("INSERT INTO alembic_version VALUES (%s)", (revision,))
        c.execute("INSERT INTO users (email) SELECT 'u' || g || '@x' "
                  "FROM generate_series(1, %s) g", (users,))
        c.execute("INSERT INTO grades (user_id, grade) SELECT 1 + g %% %s, g %% 100 "
                  "FROM generate_series(1, %s) g", (users, grades))
    try:
        yield name
    finally:
        with admin(proc) as c:
            for db in databases(proc, name):
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(db)))

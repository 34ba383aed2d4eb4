"""`rollbackd journal migrate`: the SQLite journal copied into PostgreSQL, ids and all.

Every table of the SQLite journal, in foreign-key order, in one PostgreSQL transaction that
holds the journal's write lock; ids are kept (identity columns are BY DEFAULT), each identity
sequence is moved past the largest id, and the copy is checked: the same number of rows in
every table and an unbroken audit hash chain. The destination must be empty (its schema is
created first); a failed copy leaves no rows behind. The audit chain is checked with the audit
key beside the SQLite file (or the audit-key credential): every instance on the PostgreSQL
journal needs that same key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from rollbackd.daemon.journal.pg import WRITE_KEY, PgConnection, open_pg_journal
from rollbackd.daemon.journal.schema import MIGRATIONS
from rollbackd.daemon.journal.store import Journal


class MigrationError(Exception):
    """The migration cannot be done; the message says why (no rows were copied)."""


@dataclass(frozen=True)
class Migrated:
    rows: dict[str, int]
    audit_rows: int
    server: str


def _tables(src: sqlite3.Connection) -> list[str]:
    """The journal's tables, each after the tables its foreign keys point to."""
    names = [r[0] for r in src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")]
    deps = {t: {r[2] for r in src.execute(f'PRAGMA foreign_key_list("{t}")')} - {t}
            for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and deps[t] <= set(ordered)]
        if not ready:
            left = sorted(set(names) - set(ordered))
            raise MigrationError(f"foreign keys form a cycle among {left}")
        ordered += ready
    return ordered


def _open_source(path: Path, say: Callable[[str], None]) -> sqlite3.Connection:
    if not path.is_file():
        raise MigrationError(f"{path}: no such file (the SQLite journal, e.g. "
                             "/var/lib/rollbackd/journal.sqlite3)")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as probe:
        version = probe.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise MigrationError(f"{path}: schema version {version} is newer than this rollbackd "
                             f"understands ({len(MIGRATIONS)}); upgrade rollbackd")
    if version < len(MIGRATIONS):
        say(f"{path}: upgrading the SQLite journal from schema {version} to {len(MIGRATIONS)}")
        Journal(path).close()
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _copy(src: sqlite3.Connection, dst: PgConnection, tables: list[str]) -> dict[str, int]:
    conn, identity, copied = dst.ready(), dst.identity_tables(), {}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", WRITE_KEY)
        for table in tables:
            found = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            row = found.fetchone()
            if row is None or row[0]:
                raise MigrationError(f"the destination already has rows in {table}: migrate into "
                                     "a new, empty database")
        for table in tables:
            cols = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
            rows: list[tuple[Any, ...]] = src.execute(
                f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{table}"'
                " ORDER BY rowid").fetchall()
            insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * len(cols)))
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(insert, rows)
            copied[table] = len(rows)
            if table in identity:  # new rows continue after the largest copied id
                conn.execute(sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'),"
                    " COALESCE((SELECT MAX(id) FROM {}), 0) + 1, false)").format(
                        sql.Identifier(table)), (table,))
    return copied


def migrate(sqlite_path: Path, dsn: str, say: Callable[[str], None] = print) -> Migrated:
    with closing(_open_source(sqlite_path, say)) as src:
        tables = _tables(src)
        dst = open_pg_journal(dsn, sqlite_path.parent)
        try:
            db: Any = dst.db
            copied = _copy(src, db, tables)
            for table, n in copied.items():
                row = dst.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                if row is None or row[0] != n:
                    raise MigrationError(f"{table}: {n} rows read but "
                                         f"{row[0] if row else 0} in PostgreSQL")
            audit = dst.audit.verify()
            if audit.broken is not None:
                raise MigrationError(f"the audit chain does not verify after the copy: row "
                                     f"{audit.broken}: {audit.why}")
            return Migrated(copied, audit.checked, db.server)
        finally:
            dst.close()

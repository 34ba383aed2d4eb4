"""The key disaster's database half: set the fields the lost key encrypted to NULL.

Nothing can decrypt them any more; the app reading them with a fresh key would fail on every
such row. Only the key reset plan, which never runs without an approval, calls this. The
database was backed up by the plan's checklist first, so the ciphertexts are kept.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rollbackd.policies.plans import Component, StepSpec


def clear_step(component: Component, timeout: float) -> StepSpec:
    # Setting a column to NULL twice is harmless: idempotent, but destructive.
    return StepSpec("clear_encrypted", idempotent=True, timeout=timeout, destructive=True,
                    component=component)


def split(columns: list[str]) -> list[tuple[str, str]]:
    return [(c.split(".", 1)[0], c.split(".", 1)[1]) for c in columns]


def describe(cleared: dict[str, int]) -> str:
    return ", ".join(f"{col}: {n} row(s)" for col, n in cleared.items()) or "no columns"


def clear_sqlite(path: Path, columns: list[str], timeout: float) -> dict[str, int]:
    """Blocking: one write transaction over every column, so a failure changes nothing."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cleared: dict[str, int] = {}
        try:
            for table, column in split(columns):
                # Names come from validated config (identifier pattern) and are quoted anyway.
                cur = conn.execute(f'UPDATE "{table}" SET "{column}" = NULL '
                                   f'WHERE "{column}" IS NOT NULL')
                cleared[f"{table}.{column}"] = cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cleared
    finally:
        conn.close()


def count_sqlite(path: Path, columns: list[str]) -> dict[str, int]:
    """Rows per column that still hold a value (what clear_sqlite would set to NULL)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {f"{t}.{c}": int(conn.execute(
            f'SELECT count(*) FROM "{t}" WHERE "{c}" IS NOT NULL').fetchone()[0])
            for t, c in split(columns)}
    finally:
        conn.close()


async def count_postgres(conn: psycopg.AsyncConnection[Any], columns: list[str]
                         ) -> dict[str, int]:
    found: dict[str, int] = {}
    for table, column in split(columns):
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
            sql.Identifier(table), sql.Identifier(column)))
        row = await cur.fetchone()
        found[f"{table}.{column}"] = int(row[0]) if row else 0
    return found


async def clear_postgres(conn: psycopg.AsyncConnection[Any], columns: list[str]
                         ) -> dict[str, int]:
    cleared: dict[str, int] = {}
    async with conn.transaction():
        for table, column in split(columns):
            cur = await conn.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE {} IS NOT NULL").format(
                sql.Identifier(table), sql.Identifier(column), sql.Identifier(column)))
            cleared[f"{table}.{column}"] = cur.rowcount
    return cleared

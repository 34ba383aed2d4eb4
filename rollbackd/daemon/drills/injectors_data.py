"""Built-in injectors for a target's data: a bad migration, a damaged SQLite page, a dropped
table, a replaced Fernet key. They work on any target configured with [database] / [key]."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from rollbackd.daemon.backup.envfile import read_env, replace_file, with_value
from rollbackd.daemon.drills.injector_base import DrillError, InjectContext, run_injector_argv
from rollbackd.daemon.rollback.data_settings import KeySettings, SqliteDatabase
from rollbackd.probes.fernet_key import fingerprint

MIGRATION = '''"""Normalise the password column name (a drill: the app still reads the old one).

Revision ID: {revision}
Revises: {head}
"""

from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("{table}") as batch:
        batch.alter_column("{column}", new_column_name="{column}_drill")


def downgrade() -> None:
    with op.batch_alter_table("{table}") as batch:
        batch.alter_column("{column}_drill", new_column_name="{column}")
'''


def _sqlite(ctx: InjectContext) -> SqliteDatabase:
    db = ctx.config.database
    if not isinstance(db, SqliteDatabase):
        raise DrillError(f"builtin {ctx.settings.builtin} needs an SQLite database "
                         f"([targets.{ctx.target}.database] kind = \"sqlite\")")
    return db


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise DrillError(f"database {path} does not exist")
    return sqlite3.connect(path, timeout=10)


class BadMigration:
    """auth_broken: a migration after the current head renames the password column; the app
    (which still reads it) fails every login. The file is removed after a drill that passed."""

    def __init__(self, ctx: InjectContext) -> None:
        self.ctx, self.db = ctx, _sqlite(ctx)
        if self.db.cwd is None:
            raise DrillError("builtin alembic_bad_migration needs [database].cwd (the directory "
                             "with alembic.ini)")
        self.revision = f"drill{ctx.drill_id:04d}{ctx.scenario[:4]}"
        self.file = self.db.cwd / "migrations" / "versions" / f"{self.revision}_drill.py"

    def _head(self) -> str:
        with closing(_connect(self.db.path)) as conn:
            row = conn.execute(f'SELECT version_num FROM "{self.db.alembic_table}"').fetchone()
        if row is None:
            raise DrillError(f"{self.db.alembic_table} is empty: no head to add a migration to")
        return str(row[0])

    async def inject(self) -> str:
        head = await asyncio.to_thread(self._head)
        if not self.file.parent.is_dir():
            raise DrillError(f"no migrations directory at {self.file.parent}")
        s = self.ctx.settings
        self.file.write_text(MIGRATION.format(revision=self.revision, head=head,
                                              table=s.users_table, column=s.column))
        argv = s.upgrade or [sys.executable, "-m", "alembic", "upgrade", "head"]
        env = read_env(self.db.env_file) if self.db.env_file else {}
        detail = await run_injector_argv(argv, self.ctx, "alembic upgrade", self.db.cwd, env)
        return (f"migration {head} -> {self.revision} applied (renames {s.users_table}."
                f"{s.column}); {detail}")

    async def cleanup(self) -> str:
        self.file.unlink(missing_ok=True)
        cache = self.file.parent / "__pycache__"
        for pyc in cache.glob(f"{self.file.stem}.*.pyc") if cache.is_dir() else []:
            pyc.unlink(missing_ok=True)
        return f"removed the drill's migration {self.file.name}"


def corrupt_page(path: Path, name: str | None) -> str:
    """Overwrite the start of a b-tree leaf page of table or index `name` in place, as a bad
    disk or a stray write would; the file header stays intact so the file still opens. The WAL
    is checkpointed first, so no newer copy of the page there masks the damage."""
    with closing(_connect(path)) as db:
        deadline = time.monotonic() + 10
        while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            if time.monotonic() > deadline:
                raise DrillError("the WAL could not be checkpointed (a long reader?)")
            time.sleep(0.05)
        size = db.execute("PRAGMA page_size").fetchone()[0]
        if name is None:
            rows = db.execute("SELECT name, type FROM sqlite_master WHERE type IN ('index', "
                              "'table') AND name NOT LIKE 'sqlite_%' AND rootpage > 0 "
                              "ORDER BY type = 'table', rowid").fetchall()
            if not rows:
                raise DrillError(f"{path} has no table or index to damage")
            name = str(rows[0][0])
        found = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        if found is None:
            raise DrillError(f"{path} has no table or index {name!r}")
        root = int(found[0])
    with open(path, "r+b") as fh:
        data = fh.read()
        page = next((p for p in range(root, len(data) // size + 1)
                     if data[(p - 1) * size] in (0x0D, 0x0A)), root)  # table or index leaf
        start = (page - 1) * size
        cells = int.from_bytes(data[start + 3:start + 5], "big")
        # The first cell's length and rowid varints, or the header of an empty page.
        at = start + int.from_bytes(data[start + 8:start + 10], "big") if cells else start
        fh.seek(at)
        fh.write(b"\xa5" * 24)
        fh.flush()
        os.fsync(fh.fileno())
    return f"page {page} of {name} overwritten at byte {at}"


def drop_table(path: Path, table: str) -> str:
    with closing(_connect(path)) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                      (table,)).fetchone() is None:
            raise DrillError(f"{path} has no table {table!r}")
        db.execute(f'DROP TABLE "{table}"')
        db.commit()
    return f"table {table} dropped"


class SqliteDamage:
    """data_corruption: a damaged page (sqlite_corrupt_page) or a dropped table."""

    def __init__(self, ctx: InjectContext) -> None:
        self.ctx, self.db = ctx, _sqlite(ctx)

    async def inject(self) -> str:
        table = self.ctx.settings.table
        if self.ctx.settings.builtin == "sqlite_drop_table":
            assert table is not None
            return await asyncio.to_thread(drop_table, self.db.path, table)
        return await asyncio.to_thread(corrupt_page, self.db.path, table)

    async def cleanup(self) -> str:
        return "nothing to tidy: the restore kept the damaged file as evidence"


class ReplaceKey:
    """key_invalid: a fresh Fernet key in place of the good one (a deploy with the wrong
    secret), then the key's restart argv. Only fingerprints reach the report."""

    def __init__(self, ctx: InjectContext) -> None:
        key = ctx.config.key
        if not isinstance(key, KeySettings):
            raise DrillError(f"builtin fernet_replace_key needs [targets.{ctx.target}.key]")
        self.ctx, self.key = ctx, key

    def _replace(self) -> tuple[str, str]:
        path, var = self.key.file, self.key.env_var
        text = path.read_text(encoding="utf-8")
        old = read_env(path).get(var, "") if var else text.strip()
        new = Fernet.generate_key().decode()
        data = with_value(text, var, new) if var else new + "\n"
        replace_file(path, data.encode())
        return fingerprint(old) if old else "none", fingerprint(new)

    async def inject(self) -> str:
        try:
            old, new = await asyncio.to_thread(self._replace)
        except OSError as exc:
            raise DrillError(f"cannot replace the key in {self.key.file}: {exc.strerror}") from None
        detail = f"key {old} replaced by {new} in {self.key.file}"
        if self.ctx.settings.restart and self.key.restart:
            detail += "; " + await run_injector_argv(self.key.restart, self.ctx, "restart")
        return detail

    async def cleanup(self) -> str:
        return "nothing to tidy: the restore put the good key back"


DATA_INJECTORS: dict[str, Any] = {
    "alembic_bad_migration": BadMigration,
    "sqlite_corrupt_page": SqliteDamage,
    "sqlite_drop_table": SqliteDamage,
    "fernet_replace_key": ReplaceKey,
}


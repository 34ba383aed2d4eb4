"""Helpers for the recovery tests: real corruption, the sample app's argv, plans and steps."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from rollbackd.daemon.rollback.base import StepContext
from rollbackd.daemon.rollback.data_settings import KeySettings, SqliteDatabase
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component, Plan, PlanKind, StepSpec, build_plan

SERVICE = [sys.executable, "-m", "rollbackd.daemon.demo.sampleapp.service"]


def db_path(ws: Workspace) -> Path:
    return ws.root / "data" / "grading.db"


def service_argv(ws: Workspace, action: str) -> list[str]:
    return [*SERVICE, action, "--dir", str(ws.app_dir), "--pidfile", str(ws.pidfile),
            "--log", str(ws.app_log), "--env-file", str(ws.env_file)]


def migrate_argv() -> list[str]:
    return [sys.executable, "-m", "alembic", "downgrade", "{revision}"]


def sqlite_settings(ws: Workspace, **kw: Any) -> SqliteDatabase:
    values: dict[str, Any] = {
        "kind": "sqlite", "path": db_path(ws), "stop": service_argv(ws, "stop"),
        "start": service_argv(ws, "start"), "migrate": migrate_argv(), "cwd": ws.app_dir,
        "env_file": ws.env_file, "tables": ["users", "grades"], "command_timeout": 30}
    values.update(kw)
    return SqliteDatabase(**values)


def key_settings(ws: Workspace, canary: str, **kw: Any) -> KeySettings:
    values: dict[str, Any] = {"file": ws.env_file, "env_var": "DB_ENCRYPTION_KEY",
                              "canary": canary, "restart": ws.restart_argv(),
                              "command_timeout": 30}
    values.update(kw)
    return KeySettings(**values)


def use_wal(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"


def add_grades(path: Path, n: int, course: str = "math") -> None:
    with closing(sqlite3.connect(path, timeout=10)) as db:
        uid = db.execute("SELECT id FROM users ORDER BY id LIMIT 1").fetchone()[0]
        db.executemany("INSERT INTO grades (user_id, course, grade) VALUES (?, ?, ?)",
                       [(uid, course, str(i % 100)) for i in range(n)])
        db.commit()


def corrupt_table(path: Path, table: str = "grades") -> int:
    """Overwrite a b-tree leaf page of `table` (or of an index: pass its name) in place, as a
    bad disk or a stray write would; the file header stays intact so the file still opens.

    The page must not also live in the -wal (a newer copy there would mask the damage), so the
    WAL is checkpointed completely first; pick a table the app does not write meanwhile.
    """
    with closing(sqlite3.connect(path, timeout=10)) as db:
        deadline = time.monotonic() + 10
        while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            assert time.monotonic() < deadline, "the WAL could not be checkpointed"
            time.sleep(0.05)
        size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                          (table,)).fetchone()[0]
    with open(path, "r+b") as fh:
        data = fh.read()
        page = next(p for p in range(root, len(data) // size + 1)
                    if data[(p - 1) * size] in (0x0D, 0x0A))  # table or index leaf
        start = (page - 1) * size
        cells = int.from_bytes(data[start + 3:start + 5], "big")
        # The first cell's length and rowid varints, or the header of an empty page.
        at = start + int.from_bytes(data[start + 8:start + 10], "big") if cells else start
        fh.seek(at)
        fh.write(b"\xa5" * 24)
        fh.flush()
        os.fsync(fh.fileno())
    return page


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            return str(exc)


def count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def revision(path: Path) -> str:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def wait_healthy(ws: Workspace, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{ws.url}/health", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"app not healthy after {timeout}s: {last}\n{ws.app_log.read_text()}")


def login(ws: Workspace) -> int:
    email, password = DEMO_USER
    r = httpx.post(f"{ws.url}/api/auth/login", json={"email": email, "password": password},
                   timeout=5)
    return r.status_code


def plan_for(kind: PlanKind, cls: IncidentClass, capability: Capability,
             steps: tuple[StepSpec, ...], targets: dict[Component | str, str]) -> Plan:
    return build_plan(kind, cls, [(capability, steps)], targets, {}, 30.0)


def ctx(plan: Plan, incident_id: int = 1) -> StepContext:
    return StepContext(incident_id, "grading", plan)


BAD_REVISION = "9b4d"
BAD_MIGRATION = '''"""Normalise the password column name (a bad migration: the app still reads the old one).

Revision ID: 9b4d
Revises: {head}
"""

from alembic import op

revision = "9b4d"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("password_hash", new_column_name="pw_hash")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("pw_hash", new_column_name="password_hash")
'''


def add_bad_migration(ws: Workspace, head: str | None = None) -> str:
    """Add a migration after the current head that breaks login; returns the head it follows.

    The head is read from the workspace's SQLite database unless given (an app on PostgreSQL).
    """
    head = head or revision(db_path(ws))
    (ws.app_dir / "migrations" / "versions" / "9b4d_rename_password.py").write_text(
        BAD_MIGRATION.replace("{head}", head))
    return head


# -- the sample app on PostgreSQL ----------------------------------------------------------------


def pg_connect(dsn: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit connection to `dsn` (or to another database of its cluster)."""
    kw: dict[str, Any] = {"dbname": dbname} if dbname else {}
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, **kw)


def use_postgres(ws: Workspace, dsn: str) -> None:
    """Point the workspace's app at the (empty) PostgreSQL database `dsn`, migrate it to head
    and seed the demo user, as Workspace.create does on SQLite."""
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    lines = [f"DATABASE_URL={url}" if line.startswith("DATABASE_URL=") else line
             for line in ws.env_file.read_text().splitlines()]
    ws.env_file.write_text("\n".join(lines) + "\n")
    env = {**os.environ, **ws.env()}
    for argv in (["-m", "alembic", "upgrade", "head"], ["seed.py", *DEMO_USER]):
        subprocess.run([sys.executable, *argv], cwd=ws.app_dir, env=env, check=True,
                       capture_output=True, timeout=60)


def pg_add_grades(dsn: str, n: int, course: str = "math") -> None:
    with pg_connect(dsn) as db:
        db.execute("INSERT INTO grades (user_id, course, grade) SELECT "
                   "(SELECT min(id) FROM users), %s, (g %% 100)::text "
                   "FROM generate_series(1, %s) g", (course, n))


def pg_count(dsn: str, table: str, dbname: str | None = None) -> int:
    with pg_connect(dsn, dbname) as db:
        row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                         ).fetchone()
        return int(row[0]) if row else -1


def pg_tables(dsn: str, dbname: str | None = None) -> list[str]:
    with pg_connect(dsn, dbname) as db:
        return sorted(str(r[0]) for r in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))


def pg_revision(dsn: str, dbname: str | None = None) -> str:
    with pg_connect(dsn, dbname) as db:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else ""


def pg_databases(dsn: str, prefix: str) -> list[str]:
    """The cluster's databases whose name starts with `prefix`."""
    with pg_connect(dsn, "postgres") as db:
        return sorted(str(r[0]) for r in db.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)))

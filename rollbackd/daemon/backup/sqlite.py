"""SQLite backups: the online backup API (consistent while the app writes), verified copies."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rollbackd.daemon.backup.base import BackupFailed, BackupKind, BackupResult
from rollbackd.daemon.backup.files import PRIVATE_FILE
from rollbackd.daemon.backup.sqlite_copy import CopyFailed, online_backup

MAX_PROBLEMS = 10
SIDE_FILES = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside a database; a restore moves them away with the replaced file."""


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_live(path: Path, timeout: float) -> sqlite3.Connection:
    """Read-only: cannot create the file or write it; in WAL mode it never blocks a writer."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout,
                           isolation_level=None, check_same_thread=False)


def open_copy(path: Path) -> sqlite3.Connection:
    """A copy nobody writes: immutable, so no locks and no -wal/-shm files appear beside it."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True,
                           isolation_level=None, check_same_thread=False)


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
        w in text for w in ("malformed", "not a database", "corrupt"))


def table_names(conn: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")]


def alembic_revision(conn: sqlite3.Connection, table: str) -> str | None:
    if table not in table_names(conn):
        return None
    revs = sorted(str(r[0]) for r in conn.execute(f"SELECT version_num FROM {quote_name(table)}"))
    return ",".join(revs) or None


def _table_figures(conn: sqlite3.Connection, table: str, ts_column: str) -> dict[str, Any]:
    t = quote_name(table)
    figures: dict[str, Any] = {"rows": int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])}
    try:
        figures["max_rowid"] = conn.execute(f"SELECT max(rowid) FROM {t}").fetchone()[0]
    except sqlite3.OperationalError:  # WITHOUT ROWID
        figures["max_rowid"] = None
    columns = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({t})")}
    if ts_column in columns:
        figures["max_ts"] = conn.execute(
            f"SELECT max({quote_name(ts_column)}) FROM {t}").fetchone()[0]
    return figures


def figures(conn: sqlite3.Connection, tables: list[str], ts_column: str,
            alembic_table: str) -> dict[str, Any]:
    """What a copy holds: its alembic revision and, per table, rows, max(rowid), max(ts)."""
    names = [t for t in (tables or table_names(conn)) if t != alembic_table]
    present = set(table_names(conn))
    return {
        "alembic_revision": alembic_revision(conn, alembic_table),
        "tables": {t: _table_figures(conn, t, ts_column) for t in names if t in present},
    }


def integrity_problem(conn: sqlite3.Connection) -> str | None:
    rows = conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
    problems = [line for r in rows if r[0] != "ok" for line in str(r[0]).splitlines()
                if line.strip() and not line.startswith("***")]
    return f"integrity_check: {problems[0][:200]}" if problems else None


def check_copy(path: Path, alembic_table: str) -> str | None:
    """integrity_check of a finished copy and a read of its alembic revision; None when sound."""
    if path.is_dir():
        return "a raw file copy kept as evidence: the online backup could not read the database"
    try:
        with closing(open_copy(path)) as conn:
            problem = integrity_problem(conn)
            if problem:
                return problem
            alembic_revision(conn, alembic_table)
    except sqlite3.DatabaseError as exc:
        return f"cannot read the copy: {exc}"
    return None


def raw_copy(src: Path, dest: Path) -> None:
    """Evidence of a database the backup API cannot read: its files as they are, in a folder."""
    dest.mkdir(mode=0o700)
    for suffix in ("", *SIDE_FILES):
        f = Path(f"{src}{suffix}")
        if f.exists():
            shutil.copyfile(f, dest / f.name)
            (dest / f.name).chmod(PRIVATE_FILE)


class SqliteBackuper:
    kind: BackupKind = "database"
    suffix = ".sqlite3"

    def __init__(self, path: Path, tables: list[str], ts_column: str = "created_at",
                 alembic_table: str = "alembic_version", timeout: float = 30.0) -> None:
        self.path = path
        self.tables = tables
        self.ts_column = ts_column
        self.alembic_table = alembic_table
        self.timeout = timeout

    def source_bytes(self) -> int | None:
        """The database file and its WAL: an online backup is at most that big."""
        try:
            return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                       if p.exists())
        except OSError:
            return None

    async def backup(self, dest: Path) -> BackupResult:
        if not self.path.exists():
            raise BackupFailed(f"database file {self.path} is missing")
        try:
            await online_backup(self.path, dest, self.timeout)
        except CopyFailed as exc:
            dest.unlink(missing_ok=True)
            if not exc.corrupt:
                raise BackupFailed(f"SQLite backup of {self.path} failed: {exc}") from None
            await asyncio.to_thread(raw_copy, self.path, dest)
            return BackupResult({"raw_copy": True, "online_backup_error": str(exc)})
        return await asyncio.to_thread(self._figures, dest)

    def _figures(self, dest: Path) -> BackupResult:
        try:
            with closing(open_copy(dest)) as conn:
                return BackupResult(figures(conn, self.tables, self.ts_column,
                                            self.alembic_table))
        except sqlite3.DatabaseError as exc:  # a copy of a damaged database: verify says why
            return BackupResult({"figures_error": str(exc)})

    async def verify(self, path: Path) -> str | None:
        return await asyncio.to_thread(check_copy, path, self.alembic_table)


def count_writes(path: Path, before: dict[str, Any], ts_column: str, timeout: float) -> int | None:
    """Writes since a backup whose per-table figures were `before`: what restoring it loses.

    Per table: rows inserted since (rowid beyond the backup's, or a timestamp after its newest),
    plus rows deleted since. Updates count only when the timestamp column is an updated_at.
    None when the live database cannot be read (it may be the corrupted one).
    """
    try:
        with closing(open_live(path, timeout)) as conn:
            conn.execute("BEGIN")
            present = set(table_names(conn))
            total = 0
            for table, was in before.items():
                if table not in present:
                    continue
                total += _table_writes(conn, table, was, ts_column)
            return total
    except sqlite3.DatabaseError:
        return None


def _table_writes(conn: sqlite3.Connection, table: str, was: dict[str, Any],
                  ts_column: str) -> int:
    # NOT INDEXED: counted on the table's own b-tree, so a damaged index does not hide it.
    t = quote_name(table) + " NOT INDEXED"
    rows = int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
    by_rowid = 0
    if was.get("max_rowid") is not None:
        by_rowid = int(conn.execute(f"SELECT count(*) FROM {t} WHERE rowid > ?",
                                    (was["max_rowid"],)).fetchone()[0])
    elif "max_rowid" in was:  # the table was empty at backup time
        by_rowid = rows
    by_ts = 0
    if "max_ts" in was:
        ts = quote_name(ts_column)
        if was["max_ts"] is None:
            by_ts = int(conn.execute(f"SELECT count({ts}) FROM {t}").fetchone()[0])
        else:
            by_ts = int(conn.execute(f"SELECT count(*) FROM {t} WHERE {ts} > ?",
                                     (was["max_ts"],)).fetchone()[0])
    deleted = max(0, int(was.get("rows", 0)) - (rows - by_rowid))
    return max(by_rowid, by_ts) + deleted

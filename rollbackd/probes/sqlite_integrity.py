"""sqlite_integrity: read-only integrity, schema, Alembic revision and row-count checks."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import quote

from pydantic import Field

from rollbackd.probes.base import AbsolutePath, BaseProbe, Fraction, PositiveDuration, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

MAX_PROBLEMS = 10
"""integrity_check stops after this many problems: one is enough to know, ten to show."""

def open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that can neither create the file nor write to it; blocking, use a thread.

    mode=ro never takes a write lock, and in WAL mode a reader never blocks a writer.
    """
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout,
                           isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
        word in text for word in ("malformed", "not a database", "corrupt"))


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteIntegritySettings(ProbeSettings):
    kind: Literal["sqlite_integrity"] = "sqlite_integrity"
    path: AbsolutePath
    """Absolute path of the SQLite database file; opened read-only, never created."""
    full_check_every: PositiveDuration = 3600.0
    """How often the slow full PRAGMA integrity_check runs; PRAGMA quick_check runs every time."""
    required_tables: list[str] = []
    """Tables (or views) that must exist, e.g. ["users"]."""
    alembic_table: str = Field(default="alembic_version", min_length=1)
    """The table where Alembic keeps the current revision (column version_num)."""
    alembic_revisions: list[str] = []
    """Known revision ids; when set, alembic_table must hold only these. Empty: not checked."""
    row_counts: dict[str, Fraction] = {}
    """Table -> the largest fraction (0..1) its row count may drop by since the last OK check."""


@dataclass
class _Findings:
    """What one read-only pass saw; judged against the probe's memory back on the event loop."""

    symptom: Symptom | None = None
    problem: str = ""
    integrity_ok: bool = False
    tables: int = 0
    version: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Running:
    """The connection of the pass in progress, so a cancelled check can interrupt its query."""

    conn: sqlite3.Connection | None = None


def _examine(conn: sqlite3.Connection, s: SqliteIntegritySettings, full: bool) -> _Findings:
    found = _Findings()
    pragma = "integrity_check" if full else "quick_check"
    rows = conn.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})").fetchall()
    # One row may hold several lines, under a "*** in database main ***" heading.
    problems = [line for r in rows if r[0] != "ok" for line in str(r[0]).splitlines()
                if line.strip() and not line.startswith("***")]
    if problems:
        many = f"{len(problems)}+" if len(problems) >= MAX_PROBLEMS else str(len(problems))
        found.symptom, found.problem = Symptom.INTEGRITY, (
            f"{pragma} found {many} problem(s), first: {problems[0][:200]}")
        return found
    found.integrity_ok = True
    names = {str(r[0]).lower(): str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    found.tables = len(names)
    missing = [t for t in s.required_tables if t.lower() not in names]
    if missing:
        found.symptom, found.problem = Symptom.MISSING_TABLE, (
            f"{len(missing)} of {len(s.required_tables)} required tables are missing "
            f"({', '.join(missing)})")
        return found
    _revision(conn, s, names, found)
    if found.symptom is not None:
        return found
    for table in s.row_counts:
        if table.lower() not in names:
            found.symptom, found.problem = Symptom.MISSING_TABLE, f"table {table} is missing"
            return found
        found.counts[table] = int(conn.execute(f"SELECT count(*) FROM {quote_name(table)}")
                                  .fetchone()[0])
    return found


def _revision(conn: sqlite3.Connection, s: SqliteIntegritySettings, names: dict[str, str],
              found: _Findings) -> None:
    if s.alembic_table.lower() not in names:
        if s.alembic_revisions:
            found.symptom, found.problem = Symptom.BAD_REVISION, f"there is no {s.alembic_table} table"
        return
    revisions = sorted(str(r[0]) for r in conn.execute(
        f"SELECT version_num FROM {quote_name(s.alembic_table)}"))
    found.version = ",".join(revisions) or None
    if not s.alembic_revisions:
        return
    unknown = [r for r in revisions if r not in s.alembic_revisions]
    if not revisions:
        found.symptom, found.problem = Symptom.BAD_REVISION, f"{s.alembic_table} is empty"
    elif unknown:
        found.symptom, found.problem = Symptom.BAD_REVISION, (
            f"revision {unknown[0][:64]!r} is not one of the {len(s.alembic_revisions)} known")


class SqliteIntegrityProbe(BaseProbe[SqliteIntegritySettings]):
    kind: ClassVar[str] = "sqlite_integrity"

    def __init__(self, name: str, settings: SqliteIntegritySettings) -> None:
        super().__init__(name, settings)
        self._last_full: float | None = None
        """monotonic() of the last full integrity_check that passed."""
        self._good_counts: dict[str, int] = {}
        """Row counts of the last OK observation: the baseline a collapse is measured against."""

    async def run(self, started: float) -> Observation:
        s = self.settings
        full = self._last_full is None or started - self._last_full >= s.full_check_every
        pragma = "integrity_check" if full else "quick_check"
        try:
            found = await self._pass(full)
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                return self.fail(f"{pragma} could not read {s.path.name}: {exc}.", started,
                                 Symptom.INTEGRITY)
            return self.error(f"cannot read {s.path}: {exc}.", started)
        if found is None:
            return self.fail(f"database file missing: {s.path}.", started, Symptom.INTEGRITY)
        if full and found.integrity_ok:
            self._last_full = started
        return self._judge(found, pragma, started)

    async def _pass(self, full: bool) -> _Findings | None:
        running = _Running()
        try:
            return await asyncio.to_thread(self._read, full, running)
        except asyncio.CancelledError:
            # The scheduler's timeout: stop the query so the read transaction ends now.
            if running.conn is not None:
                running.conn.interrupt()
            raise

    def _read(self, full: bool, running: _Running) -> _Findings | None:
        s = self.settings
        if not s.path.exists():
            return None
        with closing(open_read_only(s.path, s.timeout)) as conn:
            running.conn = conn
            try:
                conn.execute("BEGIN")  # one snapshot for every query of this pass
                return _examine(conn, s, full)  # closing the connection ends the transaction
            finally:
                running.conn = None

    def _judge(self, found: _Findings, pragma: str, started: float) -> Observation:
        s = self.settings
        metrics: dict[str, float] = {f"rows.{t}": float(n) for t, n in found.counts.items()}
        metrics["integrity_full_check"] = 1.0 if pragma == "integrity_check" else 0.0
        if found.symptom is not None:
            return self.fail(f"{s.path.name}: {found.problem}.", started, found.symptom,
                             found.version, metrics)
        for table, count in found.counts.items():
            before = self._good_counts.get(table)
            limit = s.row_counts[table]
            if before and count < before * (1 - limit):
                drop = 1 - count / before
                return self.fail(
                    f"{s.path.name}: rows.{table} fell from {before} to {count} "
                    f"({drop:.0%} drop, limit {limit:.0%}).", started, Symptom.ROWS_COLLAPSED,
                    found.version, metrics)
        self._good_counts = dict(found.counts)
        rev = f", alembic revision {found.version}" if found.version else ""
        rows = "".join(f", rows.{t}={n}" for t, n in found.counts.items())
        return self.ok(f"{s.path.name}: {pragma} ok, {found.tables} tables{rev}{rows}.", started,
                       found.version, metrics)

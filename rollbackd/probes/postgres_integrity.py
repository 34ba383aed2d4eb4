"""postgres_integrity: reachability, schema, Alembic revision, row counts and amcheck index checks."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from rollbackd.probes.base import AbsolutePath, BaseProbe, Duration, Fraction, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

if TYPE_CHECKING:  # psycopg is imported by the probe's first run, not with its settings
    import psycopg
    from psycopg import sql

# SQLSTATEs of corruption: internal_error (amcheck's elog), data_corrupted, index_corrupted.
CORRUPTION_STATES = {"XX000", "XX001", "XX002"}
# The server is up but will not serve: shutting down, crash recovery, starting, too many clients.
UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "53300"}
# Relation kinds that count as a table: table, partitioned, view, materialized view, foreign.
TABLE_KINDS = ("r", "p", "v", "m", "f")

_FIND = """
SELECT c.relname, n.nspname, c.relkind, array_position(current_schemas(false), n.nspname::text),
       c.oid::int8
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY(%s)
"""
_AMCHECK = """
SELECT n.nspname, has_function_privilege(
    format('%I.bt_index_check(regclass, boolean)', n.nspname), 'EXECUTE')
FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'amcheck'
"""


class PostgresIntegritySettings(ProbeSettings):
    kind: Literal["postgres_integrity"] = "postgres_integrity"
    dsn_file: AbsolutePath
    """Absolute path of a file holding the libpq connection string (URI or key=value); a secret,
    read at each check and never logged."""
    required_tables: list[str] = []
    """Tables (or views) that must exist: "users" (found on the search_path) or "schema.users"."""
    alembic_table: str = Field(default="alembic_version", min_length=1)
    """The table where Alembic keeps the current revision (column version_num)."""
    alembic_revisions: list[str] = []
    """Known revision ids; when set, alembic_table must hold only these. Empty: not checked."""
    row_counts: dict[str, Fraction] = {}
    """Table -> the largest fraction (0..1) its row count may drop by since the last OK check."""
    indexes: list[str] = []
    """B-tree indexes ("users_email_key" or "schema.name") verified with amcheck's bt_index_check
    where the amcheck extension is installed; without it they are skipped, and the detail says so."""
    create_amcheck: bool = False
    """Run CREATE EXTENSION IF NOT EXISTS amcheck first (needs the privilege to); when false,
    amcheck is used only if it is already installed."""
    heapallindexed: bool = False
    """Also verify that every table row has its index entry (slower: reads the whole table)."""
    index_check_every: Annotated[Duration, Field(ge=0)] = 0.0
    """Seconds between two index checks that passed; 0 checks them on every run."""


def read_dsn(path: Path) -> str:
    """The connection string in `path` (a small file, read on the event loop)."""
    return path.read_text(encoding="utf-8").strip()


def one_line(text: object, limit: int = 300) -> str:
    """A library message on one line (libpq's span several), cut to `limit` characters."""
    words = " ".join(str(text).split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


@dataclass
class _Findings:
    """What one pass saw; judged against the probe's memory afterwards."""

    symptom: Symptom | None = None
    problem: str = ""
    version: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    indexes_checked: int = 0
    notes: list[str] = field(default_factory=list)


class _ConnectFailed(Exception):
    """The connection could not be made; carries psycopg's error."""


def _split(name: str) -> tuple[str | None, str]:
    schema, _, rel = name.rpartition(".")
    return schema or None, rel


@dataclass(frozen=True)
class _Relation:
    schema: str
    name: str
    oid: int

    @property
    def ident(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)


async def _find(cur: psycopg.AsyncCursor[tuple[object, ...]], names: list[str],
                kinds: tuple[str, ...]) -> dict[str, _Relation]:
    """Configured name -> the relation it means, for those that exist with one of `kinds`.

    A bare name is looked up like PostgreSQL does: the first schema on the search_path."""
    await cur.execute(_FIND, ([_split(n)[1] for n in names],))
    rows = await cur.fetchall()
    found: dict[str, _Relation] = {}
    for name in names:
        schema, rel = _split(name)
        hits = sorted((pos if isinstance(pos, int) else math.inf, str(nsp), int(str(oid)))
                      for relname, nsp, kind, pos, oid in rows
                      if relname == rel and kind in kinds
                      and (nsp == schema if schema else isinstance(pos, int)))
        if hits:
            found[name] = _Relation(hits[0][1], rel, hits[0][2])
    return found


class PostgresIntegrityProbe(BaseProbe[PostgresIntegritySettings]):
    kind: ClassVar[str] = "postgres_integrity"

    def __init__(self, name: str, settings: PostgresIntegritySettings) -> None:
        super().__init__(name, settings)
        self._good_counts: dict[str, int] = {}
        """Row counts of the last OK observation: the baseline a collapse is measured against."""
        self._last_index_check: float | None = None
        """monotonic() of the last index check that passed."""

    async def run(self, started: float) -> Observation:
        from psycopg.conninfo import conninfo_to_dict

        path = self.settings.dsn_file
        try:
            dsn = read_dsn(path)
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            return self.error(f"cannot read the DSN file {str(path)!r}: {why}.", started)
        try:
            params = conninfo_to_dict(dsn)
        except Exception:  # noqa: BLE001 - its message may quote the DSN, password and all
            return self.error(f"the DSN file {str(path)!r} does not hold a valid libpq "
                              "connection string.", started)
        db = str(params.get("dbname") or params.get("user") or "postgres")  # libpq's defaults
        obs = await self._guarded(dsn, db, started)
        return self.redacted(obs, str(params.get("password") or ""))

    async def _guarded(self, dsn: str, db: str, started: float) -> Observation:
        import psycopg

        s = self.settings
        try:
            async with asyncio.timeout(s.timeout):
                found, connect = await self._pass(dsn)
        except TimeoutError:
            return self.fail(f"database {db} gave no answer within {s.timeout:g}s.", started,
                             Symptom.TIMEOUT)
        except _ConnectFailed as failed:
            return self._connect_failure(failed.__cause__, db, started)
        except psycopg.Error as exc:
            return self._query_failure(exc, db, started)
        except Exception as exc:  # a probe never raises; one line, the password redacted
            return self.error(f"probe error: {type(exc).__name__}: {one_line(exc)}", started)
        return self._judge(found, db, connect, started)

    def _connect_failure(self, exc: BaseException | None, db: str, started: float) -> Observation:
        import psycopg

        text = one_line(exc)
        low = text.lower()
        if isinstance(exc, psycopg.errors.ConnectionTimeout) or "timeout expired" in low:
            return self.fail(f"database {db}: no connection within {self.settings.timeout:g}s: "
                             f"{text}.", started, Symptom.TIMEOUT)
        if f'database "{db.lower()}" does not exist' in low:
            return self.fail(f"database {db} does not exist.", started, Symptom.INTEGRITY)
        if any(w in low for w in ("authentication", "pg_hba.conf", "role ", "permission denied")):
            return self.error(f"database {db} refused the probe's login: {text}.", started)
        return self.fail(f"cannot connect to database {db}: {text}.", started,
                         Symptom.UNREACHABLE)

    def _query_failure(self, exc: psycopg.Error, db: str, started: float) -> Observation:
        import psycopg

        state, text = exc.sqlstate or "", one_line(exc)
        if state in CORRUPTION_STATES:
            return self.fail(f"database {db}: corruption: {text}.", started, Symptom.INTEGRITY)
        if state in ("57014", "55P03"):  # our statement_timeout or lock_timeout
            return self.fail(f"database {db}: a query took over {self.settings.timeout:g}s: "
                             f"{text}.", started, Symptom.TIMEOUT)
        if state in UNAVAILABLE_STATES or isinstance(exc, psycopg.OperationalError):
            return self.fail(f"database {db} stopped serving: {text}.", started,
                             Symptom.UNREACHABLE)
        return self.error(f"probe error on database {db}: {text} (SQLSTATE {state or 'none'}).",
                          started)

    async def _pass(self, dsn: str) -> tuple[_Findings, float]:
        import psycopg

        s = self.settings
        sent = time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=max(2, math.ceil(s.timeout)),
                application_name="rollbackd-probe")
        except psycopg.Error as exc:
            raise _ConnectFailed() from exc
        connect = time.monotonic() - sent
        async with conn:  # closes the connection whatever happens, cancellation included
            millis = str(max(1, int(s.timeout * 1000)))
            async with conn.cursor() as cur:
                # A hung query or a lock wait ends on the server too, not only here.
                await cur.execute("SELECT set_config('statement_timeout', %s, false),"
                                  " set_config('lock_timeout', %s, false)", (millis, millis))
                notes = await self._amcheck_setup(cur) if self._indexes_due() else None
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await conn.set_read_only(True)
            async with conn.transaction(), conn.cursor() as cur:  # one snapshot for every query
                found = await self._examine(cur, notes)
        return found, connect

    def _indexes_due(self) -> bool:
        s, last = self.settings, self._last_index_check
        return bool(s.indexes) and (last is None or time.monotonic() - last >= s.index_check_every)

    async def _amcheck_setup(self, cur: psycopg.AsyncCursor[tuple[object, ...]]) -> list[str]:
        """Creates amcheck when told to; [] when usable, else why the index check is skipped."""
        import psycopg

        if self.settings.create_amcheck:
            try:
                await cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            except psycopg.Error as exc:  # not installed on the server, or not permitted
                return [f"index check skipped: cannot create amcheck: {one_line(exc, 120)}"]
        return []

    async def _examine(self, cur: psycopg.AsyncCursor[tuple[object, ...]],
                       amcheck: list[str] | None) -> _Findings:
        from psycopg import sql

        s, found = self.settings, _Findings()
        names = [*s.required_tables, s.alembic_table, *s.row_counts]
        tables = await _find(cur, list(dict.fromkeys(names)), TABLE_KINDS)
        missing = [t for t in s.required_tables if t not in tables]
        if missing:
            found.symptom, found.problem = Symptom.MISSING_TABLE, (
                f"{len(missing)} of {len(s.required_tables)} required tables are missing "
                f"({', '.join(missing)})")
            return found
        await self._revision(cur, tables.get(s.alembic_table), found)
        if found.symptom is not None:
            return found
        for table in s.row_counts:
            if table not in tables:
                found.symptom, found.problem = Symptom.MISSING_TABLE, f"table {table} is missing"
                return found
            await cur.execute(sql.SQL("SELECT count(*) FROM {}").format(tables[table].ident))
            row = await cur.fetchone()
            found.counts[table] = int(str(row[0])) if row else 0
        if amcheck is not None:
            found.notes = amcheck or await self._check_indexes(cur, found)
        return found

    async def _revision(self, cur: psycopg.AsyncCursor[tuple[object, ...]],
                        table: _Relation | None, found: _Findings) -> None:
        from psycopg import sql

        s = self.settings
        if table is None:
            if s.alembic_revisions:
                found.symptom, found.problem = Symptom.BAD_REVISION, f"there is no {s.alembic_table} table"
            return
        await cur.execute(sql.SQL("SELECT version_num FROM {}").format(table.ident))
        revisions = sorted(str(r[0]) for r in await cur.fetchall())
        found.version = ",".join(revisions) or None
        if not s.alembic_revisions:
            return
        unknown = [r for r in revisions if r not in s.alembic_revisions]
        if not revisions:
            found.symptom, found.problem = Symptom.BAD_REVISION, f"{s.alembic_table} is empty"
        elif unknown:
            found.symptom, found.problem = Symptom.BAD_REVISION, (
                f"revision {unknown[0][:64]!r} is not one of the {len(s.alembic_revisions)} known")

    async def _check_indexes(self, cur: psycopg.AsyncCursor[tuple[object, ...]],
                             found: _Findings) -> list[str]:
        """bt_index_check on each configured index; a corrupt one raises (caught by the caller)."""
        from psycopg import sql

        s = self.settings
        await cur.execute(_AMCHECK)
        row = await cur.fetchone()
        if row is None:
            return ["index check skipped: the amcheck extension is not installed"]
        if not row[1]:
            return ["index check skipped: no EXECUTE privilege on bt_index_check"]
        indexes = await _find(cur, s.indexes, ("i",))
        missing = [i for i in s.indexes if i not in indexes]
        if missing:
            found.symptom, found.problem = Symptom.MISSING_TABLE, (
                f"{len(missing)} of {len(s.indexes)} indexes are missing ({', '.join(missing)})")
            return []
        check = sql.SQL("SELECT {}.bt_index_check(%s::oid::regclass, %s)").format(
            sql.Identifier(str(row[0])))
        for index in indexes.values():
            await cur.execute(check, (index.oid, s.heapallindexed))
            found.indexes_checked += 1
        return []

    def _judge(self, found: _Findings, db: str, connect: float, started: float) -> Observation:
        s = self.settings
        metrics: dict[str, float] = {f"rows.{t}": float(n) for t, n in found.counts.items()}
        metrics["connect_seconds"] = connect
        metrics["indexes_checked"] = float(found.indexes_checked)
        if found.symptom is not None:
            return self.fail(f"database {db}: {found.problem}.", started, found.symptom,
                             found.version, metrics)
        for table, count in found.counts.items():
            before = self._good_counts.get(table)
            limit = s.row_counts[table]
            if before and count < before * (1 - limit):
                return self.fail(
                    f"database {db}: rows.{table} fell from {before} to {count} "
                    f"({1 - count / before:.0%} drop, limit {limit:.0%}).", started,
                    Symptom.ROWS_COLLAPSED, found.version, metrics)
        self._good_counts = dict(found.counts)
        if found.indexes_checked:
            self._last_index_check = started
        parts = [f"connected in {connect * 1000:.0f} ms"]
        parts += [f"alembic revision {found.version}"] if found.version else []
        parts += [f"rows.{t}={n}" for t, n in found.counts.items()]
        parts += [f"{found.indexes_checked} index(es) pass bt_index_check"] \
            if found.indexes_checked else []
        parts += found.notes
        return self.ok(f"database {db}: {', '.join(parts)}.", started, found.version, metrics)

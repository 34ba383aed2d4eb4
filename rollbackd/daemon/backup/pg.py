"""PostgreSQL backups: pg_dump -Fc/-Fd (light or no compression) verified with pg_restore --list,
optionally beside a snapshot database cloned with CREATE DATABASE ... TEMPLATE."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from rollbackd.daemon.backup.base import BackupFailed, BackupKind, BackupResult
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.daemon.rollback.data_settings import PostgresDatabase

log = logging.getLogger("rollbackd.backup.postgres")

MAX_NAME = 63
"""PostgreSQL's identifier limit (NAMEDATALEN - 1)."""

# libpq connection keywords and the environment variables the client tools read them from.
ENV_OF = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL", "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME", "options": "PGOPTIONS", "service": "PGSERVICE",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING", "requiressl": "PGREQUIRESSL",
}


class PgError(Exception):
    """A PostgreSQL call failed; the message is one line and never holds the DSN."""


def one_line(text: object, limit: int = 300) -> str:
    words = " ".join(str(text).split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


class Pg:
    """Connections and client-tool environments for one database, from the secret DSN."""

    def __init__(self, settings: PostgresDatabase) -> None:
        if settings.dsn_file is None:
            raise ValueError("a postgres database needs dsn_file")
        self.settings = settings
        self._dsn = settings.dsn_file.value
        try:
            params = conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError:
            raise ValueError(f"{settings.dsn_file.source} is not a libpq connection "
                             "string") from None
        self.params: dict[str, str] = {k: str(v) for k, v in params.items() if v is not None}
        db = settings.dbname or self.params.get("dbname")
        if not db:
            raise ValueError("name the database: dbname, or a dbname in the DSN")
        self.dbname = db

    def env(self, dbname: str | None = None) -> dict[str, str]:
        """PG* variables for pg_dump/pg_restore: the password travels here, never in argv."""
        out: dict[str, str] = {}
        for key, value in self.params.items():
            var = ENV_OF.get(key)
            if var is None:
                raise PgError(f"the DSN keyword {key!r} has no libpq environment variable")
            out[var] = value
        out["PGDATABASE"] = dbname or self.dbname
        return out

    def tool(self, name: str) -> str:
        d = self.settings.bin_dir
        if d is not None:
            return str(d / name)
        found = shutil.which(name)
        if found is None:
            raise PgError(f"{name} is not on PATH; set bin_dir")
        return found

    async def connect(self, dbname: str | None = None) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn, dbname=dbname or self.dbname, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise PgError(f"cannot connect to database {dbname or self.dbname}: "
                          f"{one_line(exc)}") from None

    async def maintenance(self) -> psycopg.AsyncConnection[Any]:
        return await self.connect(self.settings.maintenance_db)


def derived_name(db: str, tag: str, stamp: str) -> str:
    """`<db>_<tag>_<stamp>`, with the db part cut so it fits in an identifier."""
    tail = f"_{tag}_{stamp}"
    return db[: MAX_NAME - len(tail)] + tail


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d_%H%M%S")  # lower case: no quoting needed


async def user_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(
        "SELECT relname FROM pg_stat_user_tables ORDER BY relname")
    return [str(r[0]) for r in await cur.fetchall()]


async def exists(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def figures(conn: psycopg.AsyncConnection[Any], tables: list[str],
                  alembic_table: str, counts: bool = True,
                  copied: Mapping[int, int] | None = None) -> dict[str, Any]:
    """alembic revision, the database's oid, and per table: exact rows and the cumulative
    insert+update+delete counter (pg_stat_user_tables) that writes_since compares against.

    `copied`: exact rows already known, by table oid, of the tables a restore created empty and
    filled by COPY (the server's COPY counts); used instead of count(*) where `copied_rows` says
    they are the table's whole content, every other table is counted."""
    names = [t for t in (tables or await user_tables(conn)) if t != alembic_table]
    found: dict[str, Any] = {"tables": {}}
    cur = await conn.execute("SELECT oid::int8 FROM pg_database WHERE datname = current_database()")
    row = await cur.fetchone()
    found["db_oid"] = int(row[0]) if row else None
    found["alembic_revision"] = await revision(conn, alembic_table)
    for t in names:
        if not await exists(conn, t):
            continue
        n = 0
        if counts:
            known = await copied_rows(conn, t, copied) if copied else None
            if known is None:
                cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(t)))
                rows = await cur.fetchone()
                known = int(rows[0]) if rows else 0
            n = known
        found["tables"][t] = {"rows": n, "writes": await table_writes(conn, t)}
    return found


async def copied_rows(conn: psycopg.AsyncConnection[Any], table: str,
                      copied: Mapping[int, int]) -> int | None:
    """`SELECT count(*) FROM table` without the scan, or None when it must be scanned.

    `copied` holds only tables the restore created empty; in a pg_dump archive nothing but their
    own COPYs puts rows into them and nothing removes any. `table` is resolved as count(*) would
    resolve it, and its COPY count is its count(*) only for a plain table: a partition's rows may
    have come through its parent's COPY, an inheritance parent's count(*) has its children's."""
    cur = await conn.execute(
        "SELECT c.oid::int8 FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s)) "
        "AND c.relkind = 'r' AND NOT c.relhassubclass AND NOT c.relispartition", (table,))
    row = await cur.fetchone()
    return copied.get(int(row[0])) if row else None


async def table_writes(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    cur = await conn.execute(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 "
        "FROM pg_stat_user_tables WHERE relname = %s", (table,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def revision(conn: psycopg.AsyncConnection[Any], alembic_table: str) -> str | None:
    if not await exists(conn, alembic_table):
        return None
    cur = await conn.execute(sql.SQL("SELECT version_num FROM {}").format(
        sql.Identifier(alembic_table)))
    revs = sorted(str(r[0]) for r in await cur.fetchall())
    return ",".join(revs) or None


async def database_exists(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


async def clone(conn: psycopg.AsyncConnection[Any], new: str, template: str, owner: str | None,
                strategy: str) -> None:
    """CREATE DATABASE new TEMPLATE template STRATEGY ...; the template must have no sessions."""
    q = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
        sql.Identifier(new), sql.Identifier(template), sql.SQL(strategy.upper()))
    if owner:
        q = q + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    try:
        await conn.execute(q)
    except psycopg.Error as exc:
        raise PgError(f"CREATE DATABASE {new} TEMPLATE {template} failed: "
                      f"{one_line(exc)}") from None


async def owner_of(conn: psycopg.AsyncConnection[Any], db: str) -> str | None:
    cur = await conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             (db,))
    row = await cur.fetchone()
    return str(row[0]) if row else None


async def drop_database(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


async def allow_connections(conn: psycopg.AsyncConnection[Any], db: str, allow: bool) -> None:
    await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(db), sql.SQL("true" if allow else "false")))


def snapshot_names(all_names: list[str], db: str) -> list[str]:
    prefix = derived_name(db, "snap", "")
    return sorted(n for n in all_names if n.startswith(prefix))


# A table's own entry in `pg_restore --list`: "<id>; <tableoid> <oid> TABLE <schema> <name>
# <owner>" (its rows are a separate "TABLE DATA" entry).
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (?!DATA )\S+ (.*)$")


def missing_tables(entries: list[str], tables: Sequence[str]) -> list[str]:
    """The names in `tables` that no TABLE entry of the archive's table of contents holds.

    The entry's "<name> <owner>" is split after the name, as a name may hold spaces."""
    held = [m.group(1) for ln in entries if (m := _TOC_TABLE.match(ln))]

    def holds(t: str) -> bool:
        return any(h == t or (h.startswith(f"{t} ") and " " not in h[len(t) + 1:])
                   for h in held)

    return [t for t in tables if not holds(t)]


async def pg_restore_list(pg: Pg, path: Path, timeout: float,
                          tables: Sequence[str] = ()) -> str | None:
    """None when pg_restore can read the archive's table of contents and it holds each of
    `tables`, else why not."""
    try:
        tool = pg.tool("pg_restore")
    except PgError as exc:
        return str(exc)
    try:
        res = await run_argv([tool, "--list", str(path)], timeout)
    except StepFailed as exc:
        return f"pg_restore --list: {one_line(exc, 200)}"
    entries = [ln for ln in res.output.splitlines() if ln and not ln.startswith(";")]
    if not entries:
        return "pg_restore --list: the archive holds no entries"
    missing = missing_tables(entries, tables)
    if missing:
        # A dump of a database that lost a table (the checklist's copy of a damaged state, or a
        # scheduled one nobody noticed was damaged) is evidence, never a restore candidate.
        return (f"pg_restore --list: the archive holds no table {', '.join(missing)} of the "
                f"{len(tables)} the backups are for")
    return None


class PgDumpBackuper:
    kind: BackupKind = "database"

    def __init__(self, settings: PostgresDatabase) -> None:
        self.settings = settings
        self.pg = Pg(settings)
        self.suffix = ".dump" if settings.dump_format == "custom" else ".dumpdir"

    async def backup(self, dest: Path) -> BackupResult:
        s = self.settings
        versions: dict[str, Any] = {"dbname": self.pg.dbname, "format": s.dump_format}
        source = self.pg.dbname
        if s.snapshot:
            snap = await self._snapshot()
            if snap is not None:
                versions["snapshot_db"] = snap
                source = snap  # dump the frozen clone: the same data, no load on the live db
        try:
            conn = await self.pg.connect(source)
        except PgError as exc:
            raise BackupFailed(str(exc)) from None
        async with conn:
            try:
                versions.update(await figures(conn, list(s.tables), s.alembic_table))
            except psycopg.Error as exc:
                raise BackupFailed(f"cannot read {source}: {one_line(exc)}") from None
            if source != self.pg.dbname:  # the live database's counters and oid, for writes
                versions.update(await self._live_counters(versions))
        await self._dump(source, dest)
        if source != self.pg.dbname:
            await self._freeze(source)
        return BackupResult(versions)

    async def _freeze(self, snap: str) -> None:
        """Nobody connects to a snapshot: it stays exactly what was dumped and counted."""
        conn = await self.pg.maintenance()
        async with conn:
            await allow_connections(conn, snap, False)

    async def _live_counters(self, versions: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            conn = await self.pg.connect()
        except PgError:
            return out
        async with conn:
            cur = await conn.execute(
                "SELECT oid::int8 FROM pg_database WHERE datname = current_database()")
            row = await cur.fetchone()
            out["db_oid"] = int(row[0]) if row else None
            tables = dict(versions.get("tables", {}))
            for t, fig in tables.items():
                tables[t] = {**fig, "writes": await table_writes(conn, t)}
            out["tables"] = tables
        return out

    async def _dump(self, source: str, dest: Path) -> None:
        s = self.settings
        try:
            argv = [self.pg.tool("pg_dump"), "-Z", str(s.compress), "-f", str(dest)]
            env = self.pg.env(source)
        except PgError as exc:
            raise BackupFailed(str(exc)) from None
        argv[1:1] = ["-Fc"] if s.dump_format == "custom" else ["-Fd", "-j", str(s.jobs)]
        try:
            await run_argv(argv, s.restore_timeout, env=env)
        except StepFailed as exc:
            raise BackupFailed(f"pg_dump of {source} failed: {one_line(exc, 300)}") from None

    async def _snapshot(self) -> str | None:
        """Clone the live database; None (logged) when it cannot be cloned right now."""
        s = self.settings
        name = derived_name(self.pg.dbname, "snap", utc_stamp())
        try:
            conn = await self.pg.maintenance()
        except PgError as exc:
            log.warning("database=%s snapshot=skipped reason=%r", self.pg.dbname, str(exc))
            return None
        async with conn:
            try:
                if await database_exists(conn, name):
                    return None
                owner = await owner_of(conn, self.pg.dbname)
                await clone(conn, name, self.pg.dbname, owner, s.strategy)
            except (PgError, psycopg.Error) as exc:
                log.warning("database=%s snapshot=skipped reason=%r", self.pg.dbname,
                            one_line(exc))
                return None
            cur = await conn.execute("SELECT datname FROM pg_database")
            names = snapshot_names([str(r[0]) for r in await cur.fetchall()], self.pg.dbname)
            for old in names[: max(0, len(names) - s.snapshot_keep)]:
                await drop_database(conn, old)
                log.info("database=%s snapshot=%s status=dropped reason=newer kept",
                         self.pg.dbname, old)
        return name

    async def verify(self, path: Path) -> str | None:
        return await pg_restore_list(self.pg, path, self.settings.command_timeout,
                                     self.settings.tables)


def writes_between(before: Mapping[str, Any], now: Mapping[str, Any], same_db: bool) -> int:
    """Writes made since a backup: the per-table insert+update+delete counters' growth on the
    same database, else (the counters restarted) the row-count change per table."""
    total = 0
    for table, was in before.items():
        cur = now.get(table)
        if cur is None:
            continue
        grew = int(cur["writes"]) - int(was.get("writes", 0))
        if same_db and grew >= 0:
            total += grew
        else:
            total += abs(int(cur["rows"]) - int(was.get("rows", 0)))
    return total

"""PostgreSQL restore and Alembic downgrade. Never drops the only copy: the backup is restored
into a new database (a snapshot clone, or pg_restore -j of the dump), verified, and swapped in by
two renames inside one short step; the replaced database is kept as <db>_corrupted_<time>."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from rollbackd.daemon.backup.base import BackupFailed, BackupRefused, RestoreTestFailed, StoredBackup
from rollbackd.daemon.backup.envfile import read_env
from rollbackd.daemon.backup.pg import (
    Pg,
    PgDumpBackuper,
    PgError,
    allow_connections,
    database_exists,
    derived_name,
    drop_database,
    figures,
    one_line,
    owner_of,
    revision,
    utc_stamp,
    writes_between,
)
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    Found,
    StepContext,
    StepFailed,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.daemon.rollback.data_settings import REVISION, PostgresDatabase
from rollbackd.daemon.rollback.effects import cleared_effect, downgrade_effect, snapshot_effect
from rollbackd.daemon.rollback.encrypted_columns import (
    clear_postgres,
    clear_step,
    count_postgres,
    describe,
)
from rollbackd.daemon.rollback.pg_load import Restored, restore_env, restore_in_sections
from rollbackd.daemon.rollback.receipts import command_effect, run_recorded
from rollbackd.daemon.rollback.store_wiring import StoreWiring
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

log = logging.getLogger("rollbackd.rollback.postgres")

DB = Component.DATABASE
TERMINATE_WAIT_MS = 5000
# How PostgreSQL says its disk is full: ENOSPC, or a short write when extending a file (both
# with this hint).
DISK_FULL = ("No space left on device", "Check free disk space")


def restored_name(db: str, backup_id: int) -> str:
    return derived_name(db, "restore", str(backup_id))


def mismatch(expected: dict[str, Any], found: dict[str, Any], counts: bool = True
             ) -> str | None:
    """Why a restored database does not hold what the backup held, or None."""
    want_rev = expected.get("alembic_revision")
    if want_rev and found.get("alembic_revision") != want_rev:
        return f"alembic revision {found.get('alembic_revision')}, the backup held {want_rev}"
    have = found.get("tables", {})
    for table, fig in dict(expected.get("tables", {})).items():
        if table not in have:
            return f"table {table} is missing"
        if counts and int(have[table]["rows"]) != int(fig["rows"]):
            return f"table {table} has {have[table]['rows']} rows, the backup held {fig['rows']}"
    return None


async def swap_databases(pg: Pg, current: str, restored: str, kept: str) -> tuple[int, float]:
    """The maintenance step: refuse new sessions on `current`, terminate the app's, rename it
    to `kept` and `restored` into its place in one transaction. Undone on failure.

    Returns the sessions terminated and the seconds the app could not reach a database.
    """
    conn = await pg.maintenance()
    async with conn:
        started = time.perf_counter()
        await allow_connections(conn, current, False)
        try:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s)) FROM "
                "pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (TERMINATE_WAIT_MS, current))
            row = await cur.fetchone()
            ended = int(row[0]) if row else 0
            async with conn.transaction():
                await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(current), sql.Identifier(kept)))
                await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(restored), sql.Identifier(current)))
        except BaseException:
            try:
                await allow_connections(conn, current, True)
            except psycopg.Error:
                log.exception("database=%s status=undo-failed", current)
            raise
        seconds = time.perf_counter() - started
        # The kept copy is evidence: readable for a person; the app connects by name, not to it.
        await allow_connections(conn, kept, True)
    return ended, seconds


class PostgresExecutor(StoreWiring):
    component: ClassVar[Component] = DB
    backend: ClassVar[str] = "postgres"

    def __init__(self, settings: PostgresDatabase) -> None:
        self.settings = settings
        self.backuper = PgDumpBackuper(settings)
        self.pg = self.backuper.pg
        self._store: BackupStore | None = None
        self.phase_seconds: dict[str, float] = {}
        """Seconds of each phase of the last prepare (create, the restore's, verify)."""
        t, r = settings.command_timeout, settings.restore_timeout
        self.restore_steps: tuple[StepSpec, ...] = (
            StepSpec("prepare_restore", idempotent=True, timeout=r, component=DB),
            StepSpec("swap_database", idempotent=False, timeout=2 * t + 60, destructive=True,
                     component=DB),
            StepSpec("check_restored", idempotent=True, timeout=r, component=DB),
        ) + ((StepSpec("start_app", idempotent=True, timeout=t, component=DB),)
             if settings.start else ())
        self.downgrade_steps: tuple[StepSpec, ...] = (
            StepSpec("snapshot_database", idempotent=True, timeout=r, component=DB),
            StepSpec("alembic_downgrade", idempotent=False, timeout=t, destructive=True,
                     component=DB),
            StepSpec("check_revision", idempotent=True, timeout=60, component=DB),
        )
        self.clear_steps = (clear_step(DB, t),)

    @property
    def dbname(self) -> str:
        return self.pg.dbname

    # -- wiring ---------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        caps: dict[Capability, tuple[StepSpec, ...]] = {
            Capability.DATABASE_RESTORE: self.restore_steps}
        if self.settings.migrate:
            caps[Capability.DATABASE_DOWNGRADE] = self.downgrade_steps
        if self.settings.encrypted_columns:
            caps[Capability.DATABASE_CLEAR_ENCRYPTED] = self.clear_steps
        return caps

    # -- the checklist ------------------------------------------------------------------------

    async def current_version(self) -> str | None:
        try:
            conn = await self.pg.connect()
        except PgError:
            return None
        async with conn:
            try:
                return await revision(conn, self.settings.alembic_table)
            except psycopg.Error:
                return None

    async def evidence(self) -> dict[str, Any]:
        found: dict[str, Any] = {"database": self.dbname}
        try:
            conn = await self.pg.connect()
        except PgError as exc:
            found["error"] = str(exc)
            return found
        async with conn:
            try:
                figs = await figures(conn, list(self.settings.tables), self.settings.alembic_table)
                found["alembic_revision"] = figs["alembic_revision"]
                found["rows"] = {t: f["rows"] for t, f in figs["tables"].items()}
            except psycopg.Error as exc:
                found["error"] = one_line(exc)
        if self._store is not None:
            newest = self._store.newest_verified("database")
            found["newest_verified_backup"] = newest.describe() if newest else None
        return found

    async def backup_current(self, ctx: StepContext) -> str:
        return await self.take_current(ctx, "dumped as")

    async def verify_target(self, ctx: StepContext) -> str:
        names = {s.name for s in ctx.plan.steps}
        details = []
        if "swap_database" in names:
            b = await self._checked(ctx)
            snap = await self._snapshot_of(b)
            source = f"snapshot database {snap}" if snap else "its dump"
            details.append(f"backup #{b.id} of {b.created_at:%H:%M:%S} is verified and its "
                           f"checksum holds; restoring from {source}")
        if "alembic_downgrade" in names:
            details.append(f"downgrade to {self._revision(ctx)}")
        return "; ".join(details) or "nothing to check"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        steps: dict[str, Callable[[StepContext], Any]] = {
            "prepare_restore": self._prepare, "swap_database": self._swap_step,
            "check_restored": self._check_restored, "start_app": self._start,
            "snapshot_database": self._snapshot, "alembic_downgrade": self._downgrade,
            "check_revision": self._check_revision, "clear_encrypted": self._clear_encrypted,
        }
        step = steps.get(name)
        if step is None:
            raise StepFailed(f"postgres executor has no step {name!r}")
        try:
            result: str = await step(ctx)
        except PgError as exc:
            raise StepFailed(str(exc)) from None
        return result

    # -- what a restore would lose ---------------------------------------------------------------

    async def writes_since(self, backup_id: int) -> int | None:
        b = self._store.get(backup_id) if self._store else None
        before = b.versions.get("tables") if b else None
        if not b or not before:
            return None
        try:
            conn = await self.pg.connect()
        except PgError:
            return None
        async with conn:
            try:
                now = await figures(conn, list(before), self.settings.alembic_table)
            except psycopg.Error:
                return None
        return writes_between(dict(before), now["tables"],
                              now.get("db_oid") == b.versions.get("db_oid"))

    # -- restore ----------------------------------------------------------------------------


    async def _checked(self, ctx: StepContext) -> StoredBackup:
        try:
            return await self.store.checked(ctx.backup_of(DB), "database")
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None

    async def _snapshot_of(self, b: StoredBackup) -> str | None:
        snap = b.versions.get("snapshot_db")
        if not snap:
            return None
        conn = await self.pg.maintenance()
        async with conn:
            return str(snap) if await database_exists(conn, str(snap)) else None

    async def prepare(self, b: StoredBackup) -> str:
        """Restore backup `b` into <db>_restore_<id> and verify it; the live db is untouched."""
        target = restored_name(self.dbname, b.id)
        snap = await self._snapshot_of(b)
        started = time.perf_counter()
        seconds: dict[str, float] = {}
        conn = await self.pg.maintenance()
        async with conn:
            await drop_database(conn, target)  # a leftover of an interrupted attempt: ours
            owner = await owner_of(conn, self.dbname)
            if snap:
                # Zero copy: the frozen snapshot itself becomes the restored database (its dump
                # stays for later restores). Nobody can connect to it, so the exact row counts
                # taken when it was made still hold; check_restored counts them again.
                await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(snap), sql.Identifier(target)))
                await allow_connections(conn, target, True)
            else:
                await self._create_empty(conn, target, owner)
        seconds["create"] = time.perf_counter() - started
        restored = Restored(f"the snapshot {snap} renamed, no copy")
        try:
            if not snap:
                restored = await self._pg_restore(b.path, target)
                seconds.update(restored.seconds)
            checked = time.perf_counter()
            # After a restore in sections the exact row counts are the COPY counts of the tables
            # it created (see figures); every other table is counted with count(*).
            problem = await self._verify_db(target, dict(b.versions), counts=not snap,
                                            copied=restored.rows)
            seconds["verify"] = time.perf_counter() - checked
        except BaseException:
            await self._undo_prepare(target, snap)
            raise
        finally:
            self.phase_seconds = seconds
        if problem:
            await self._undo_prepare(target, snap)
            raise StepFailed(f"the database restored from backup #{b.id} does not hold what "
                             f"the backup held: {problem}; the current database is untouched")
        rev = b.versions.get("alembic_revision")
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
        return (f"backup #{b.id} restored into {target} ({restored.how}) in "
                f"{time.perf_counter() - started:.1f}s ({phases}); tables and row counts match"
                f"{f', revision {rev}' if rev else ''}")

    async def _create_empty(self, conn: psycopg.AsyncConnection[Any], name: str,
                            owner: str | None) -> None:
        """The empty database a dump is restored into: the live one's owner, and the
        restore_tablespace where one is set."""
        q = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        if owner:
            q = q + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        if self.settings.restore_tablespace:
            q = q + sql.SQL(" TABLESPACE {}").format(
                sql.Identifier(self.settings.restore_tablespace))
        await conn.execute(q)

    async def _pg_restore(self, path: Path, target: str) -> Restored:
        """Restore the dump at `path` into the new, empty database `target` (see restore_method);
        raises StepFailed, and leaves `target` for the caller to drop."""
        s = self.settings
        # The new database is nobody's until it is verified and swapped in: sort index builds
        # in memory and do not wait for each commit to reach the disk (fsync'd at the checkpoint).
        env = restore_env(self.pg, target, s.restore_work_mem)
        if s.restore_method == "sections":
            return await restore_in_sections(self.pg, path, target, env, s.jobs, s.copy_streams,
                                             s.restore_timeout)
        argv = [self.pg.tool("pg_restore"), "-j", str(s.jobs), "--exit-on-error",
                "-d", target, str(path)]
        started = time.perf_counter()
        try:
            await run_argv(argv, s.restore_timeout, env=env)
        except StepFailed as exc:
            raise StepFailed(f"pg_restore into {target} failed: {one_line(exc, 300)}; the "
                             "current database is untouched") from None
        return Restored(f"pg_restore -j {s.jobs} of {path.name}",
                        seconds={"pg_restore": time.perf_counter() - started})

    async def _verify_db(self, name: str, expected: dict[str, Any], counts: bool = True,
                         copied: Mapping[int, int] | None = None) -> str | None:
        """Why database `name` does not hold what the backup held, or None: its tables, their
        exact row counts (`copied`: those a restore's COPYs already gave, by table oid), and its
        alembic revision."""
        conn = await self.pg.connect(name)
        async with conn:
            found = await figures(conn, list(expected.get("tables", {})),
                                  self.settings.alembic_table, counts, copied)
        return mismatch(expected, found, counts)

    async def _undo_prepare(self, target: str, snap: str | None) -> None:
        if not snap:
            await self._drop_quietly(target)
            return
        try:  # give the snapshot its name back, frozen again
            conn = await self.pg.maintenance()
            async with conn:
                await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(target), sql.Identifier(snap)))
                await allow_connections(conn, snap, False)
        except (PgError, psycopg.Error):
            log.exception("database=%s status=undo-failed", target)

    async def _drop_quietly(self, name: str) -> None:
        try:
            conn = await self.pg.maintenance()
            async with conn:
                await drop_database(conn, name)
        except (PgError, psycopg.Error):
            log.exception("database=%s status=drop-failed", name)

    async def _prepare(self, ctx: StepContext) -> str:
        b = await self._checked(ctx)
        try:
            return await self.prepare(b)
        except psycopg.Error as exc:
            why = (f"restoring backup #{b.id} failed: {one_line(exc)}; the current database "
                   "is untouched")
        except StepFailed as exc:
            why = str(exc)
        if any(sign in why for sign in DISK_FULL):
            space = self.settings.restore_tablespace
            where = f"tablespace {space}" if space else "the default tablespace"
            why = f"not enough space in {where} to restore backup #{b.id}: {why}"
        raise StepFailed(why)

    async def swap(self, backup_id: int) -> tuple[str, int, float]:
        """Swap the prepared database in; returns the kept name, sessions ended, seconds."""
        restored = restored_name(self.dbname, backup_id)
        kept = derived_name(self.dbname, "corrupted", utc_stamp())
        conn = await self.pg.maintenance()
        async with conn:
            if not await database_exists(conn, restored):
                raise StepFailed(f"the restored database {restored} is missing: "
                                 "prepare_restore must run first; nothing was changed")
            n = 1
            while await database_exists(conn, kept):
                n += 1
                kept = derived_name(self.dbname, "corrupted", f"{utc_stamp()}_{n}")
        try:
            ended, seconds = await swap_databases(self.pg, self.dbname, restored, kept)
        except psycopg.Error as exc:
            raise StepFailed(f"swapping in {restored} failed ({one_line(exc)}); the current "
                             "database is in place again") from None
        return kept, ended, seconds

    async def _swap_step(self, ctx: StepContext) -> str:
        backup_id = ctx.backup_of(DB)
        s = self.settings
        if s.stop:
            await run_recorded(ctx, "swap_database.stop", s.stop, s.command_timeout)
        try:
            kept, ended, seconds = await self.swap(backup_id)
        except StepFailed:
            if s.start:
                await self._start_quietly()
            raise
        log.info("target=%s database=%s backup=%d status=swapped swap=%.1fms kept=%s",
                 ctx.target, self.dbname, backup_id, seconds * 1000, kept)
        return (f"{ended} session(s) terminated; backup #{backup_id} in place as {self.dbname} "
                f"in {seconds * 1000:.1f} ms; the replaced database is kept as {kept}")

    async def _start_quietly(self) -> None:
        assert self.settings.start is not None
        try:
            await run_argv(self.settings.start, self.settings.command_timeout)
        except StepFailed as exc:
            log.error("database=%s status=start-failed reason=%r", self.dbname, str(exc))

    async def _check_restored(self, ctx: StepContext) -> str:
        b = self.store.get(ctx.backup_of(DB))
        if b is None:
            raise StepFailed("the restored backup is no longer in the catalog")
        problem = await self._verify_db(self.dbname, dict(b.versions))
        if problem:
            raise StepFailed(f"the restored {self.dbname} fails its check: {problem}")
        rev = b.versions.get("alembic_revision")
        return f"{self.dbname}: tables and row counts match backup #{b.id}" + (
            f"; alembic_version {rev}" if rev else "")

    async def _start(self, ctx: StepContext) -> str:
        assert self.settings.start is not None
        res = await run_recorded(ctx, "start_app", self.settings.start,
                                 self.settings.command_timeout)
        return f"app started with {Path(self.settings.start[0]).name} (exit {res.returncode})"

    # -- after a crash: did the step's effect happen? -----------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "prepare_restore":
            return await self._prepared_effect(ctx)
        if name == "swap_database":
            return await self._swap_effect(ctx, since)
        if name == "start_app":
            return command_effect(ctx, name, since)
        if name == "snapshot_database":
            return snapshot_effect(self.store, ctx)
        if name == "alembic_downgrade":
            return downgrade_effect(await self.current_version(), self._revision(ctx), ctx)
        if name == "clear_encrypted":
            conn = await self.pg.connect()
            async with conn:
                return cleared_effect(await count_postgres(
                    conn, list(self.settings.encrypted_columns)))
        return CHECK_ONLY

    async def _prepared_effect(self, ctx: StepContext) -> Effect:
        b = self.store.get(ctx.backup_of(DB))
        restored = restored_name(self.dbname, ctx.backup_of(DB))
        conn = await self.pg.maintenance()
        async with conn:
            there = await database_exists(conn, restored)
        if not there or b is None:
            return absent(f"no restored database {restored}")
        problem = await self._verify_db(restored, dict(b.versions))
        if problem:
            return absent(f"{restored} is there but incomplete ({problem}): it is restored "
                          "again")
        return done(f"{restored} holds backup #{b.id}: tables and row counts match")

    async def _swap_effect(self, ctx: StepContext, since: datetime) -> Effect:
        restored = restored_name(self.dbname, ctx.backup_of(DB))
        stamp = since.astimezone(UTC).strftime("%Y%m%d_%H%M%S")  # as utc_stamp() names it
        floor = derived_name(self.dbname, "corrupted", stamp)
        prefix = floor[:-len(stamp)]  # <db>_corrupted_
        conn = await self.pg.maintenance()
        async with conn:
            there = await database_exists(conn, restored)
            cur = await conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s "
                                     "AND datname >= %s ORDER BY datname DESC",
                                     (prefix.replace("_", r"\_") + "%", floor))
            kept = [str(r[0]) for r in await cur.fetchall()]
            live = await database_exists(conn, self.dbname)
        if not there and kept and live:
            return done(f"{self.dbname} is the restored database (the name {restored} is gone);"
                        f" the replaced one is kept as {kept[0]}")
        stop = command_effect(ctx, "swap_database.stop", since) if self.settings.stop else None
        if there and not kept:
            if stop is None or stop.found is Found.ABSENT:
                return absent(f"{restored} is still waiting beside {self.dbname}; nothing was "
                              "stopped")
            return unknown(f"{restored} is still waiting beside {self.dbname}, but the stop "
                           f"command ran ({stop.what}): the app may be down")
        return unknown(f"{restored} {'exists' if there else 'is gone'}, {self.dbname} "
                       f"{'exists' if live else 'is missing'}, kept: "
                       f"{', '.join(kept) or 'none'}: the swap may be half done")

    # -- the key disaster ---------------------------------------------------------------------

    async def _clear_encrypted(self, ctx: StepContext) -> str:
        conn = await self.pg.connect()
        async with conn:
            try:
                cleared = await clear_postgres(conn, list(self.settings.encrypted_columns))
            except psycopg.Error as exc:
                raise StepFailed(f"clearing the encrypted columns failed: {one_line(exc)}; "
                                 "nothing was changed") from None
        return f"set to NULL (undecryptable without the lost key): {describe(cleared)}"

    # -- Alembic downgrade --------------------------------------------------------------------

    def _revision(self, ctx: StepContext) -> str:
        rev = ctx.target_of("revision")
        if not REVISION.match(rev):
            raise StepFailed(f"refusing the revision {rev[:40]!r}: not an Alembic revision id")
        return rev

    async def _snapshot(self, ctx: StepContext) -> str:
        mine = [b for b in self.store.for_incident("database", ctx.incident_id) if b.verified]
        if mine:
            return f"verified snapshot {mine[-1].describe()} was taken before any change"
        try:
            b = await self.store.take(self.backuper, f"incident-{ctx.incident_id}-snapshot",
                                      ctx.incident_id)
        except BackupFailed as exc:
            raise StepFailed(f"cannot back up the database: {exc}; not downgrading") from None
        if not b.verified:
            raise StepFailed(f"backup {b.describe()} did not verify: refusing to downgrade")
        return f"verified backup {b.describe()}"

    async def _downgrade(self, ctx: StepContext) -> str:
        rev = self._revision(ctx)
        s = self.settings
        assert s.migrate is not None
        argv = [a.replace("{revision}", rev) for a in s.migrate]
        env = None
        if s.env_file is not None:
            try:
                env = await asyncio.to_thread(read_env, s.env_file)
            except OSError as exc:
                raise StepFailed(f"cannot read env file {s.env_file}: {exc.strerror}") from None
        await run_argv(argv, s.command_timeout, cwd=s.cwd, env=env)
        return f"{Path(argv[0]).name} downgrade to {rev}: exit 0"

    async def _check_revision(self, ctx: StepContext) -> str:
        rev = self._revision(ctx)
        now = await self.current_version()
        if now != rev:
            raise StepFailed(f"alembic_version is {now} after the downgrade, expected {rev}")
        return f"alembic_version is {rev}"

    # -- the scheduled test restore -----------------------------------------------------------

    async def test_restore(self, b: StoredBackup) -> str:
        """Prove that dump `b` restores, by the path a real restore takes: pg_restore -j into a
        scratch database <db>_restoretest_<id>, whose tables, row counts and alembic revision
        must match the catalog; the scratch database is dropped in every case (failure,
        cancellation). The live database and any snapshot database are never touched.

        Raises RestoreTestFailed when the dump is at fault, PgError when PostgreSQL could not
        be asked (down, or no room): then nothing is known about the dump.
        """
        scratch = derived_name(self.dbname, "restoretest", str(b.id))
        started = time.perf_counter()
        conn = await self.pg.maintenance()
        async with conn:
            try:
                for old in await self._restore_test_leftovers(conn):
                    await drop_database(conn, old)  # of a test a crash interrupted: ours
                # Made as a real restore makes it, so the test needs what a restore needs.
                await self._create_empty(conn, scratch, await owner_of(conn, self.dbname))
            except psycopg.Error as exc:
                raise PgError(f"cannot create the scratch database {scratch}: "
                              f"{one_line(exc)}") from None
        try:
            try:
                restored = await self._pg_restore(b.path, scratch)
                # Nothing waits on a test restore: count every table, not just the COPY tags.
                problem = await self._verify_db(scratch, dict(b.versions))
            except (StepFailed, PgError, psycopg.Error) as exc:
                why = one_line(exc, 400)
                if await self._server_trouble(why):
                    raise PgError(f"the test restore of backup #{b.id} could not run: "
                                  f"{why}") from None
                raise RestoreTestFailed(f"backup #{b.id} does not restore: {why}") from None
            if problem:
                raise RestoreTestFailed(f"the database restored from backup #{b.id} does not "
                                        f"hold what the backup held: {problem}")
        finally:  # also when cancelled: the drop runs to its end even if we are cancelled again
            await asyncio.shield(self._drop_quietly(scratch))
        rev = b.versions.get("alembic_revision")
        return (f"backup #{b.id} restored into {scratch} ({restored.how}) in "
                f"{time.perf_counter() - started:.1f}s; tables and row counts "
                f"match{f', revision {rev}' if rev else ''}; {scratch} dropped")

    async def _restore_test_leftovers(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        prefix = derived_name(self.dbname, "restoretest", "")
        cur = await conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                 (prefix,))
        return [str(r[0]) for r in await cur.fetchall()
                if str(r[0])[len(prefix):].isdigit() and str(r[0]) != self.dbname]

    async def _server_trouble(self, why: str) -> bool:
        """Whether a failed test restore says nothing about the dump: the server is gone, or
        out of room (a dump that restores needs that room at a real restore too, but it is
        not the dump that is broken)."""
        if any(s in why for s in ("No space left on device", "could not extend file",
                                  "timed out after", "cannot connect to database")):
            return True
        try:
            conn = await self.pg.maintenance()
        except PgError:
            return True
        async with conn:
            return False

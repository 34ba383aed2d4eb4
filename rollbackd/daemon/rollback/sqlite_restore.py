"""SQLite restore and Alembic downgrade: a staged, verified copy swapped in while the app is
stopped for milliseconds, the replaced file kept beside it; snapshot first, then downgrade."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from rollbackd.daemon.backup.base import BackupFailed, BackupRefused, StoredBackup
from rollbackd.daemon.backup.envfile import read_env
from rollbackd.daemon.backup.files import checksum
from rollbackd.daemon.backup.sqlite import (
    SIDE_FILES,
    SqliteBackuper,
    alembic_revision,
    count_writes,
    integrity_problem,
    open_copy,
    open_live,
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
from rollbackd.daemon.rollback.data_settings import REVISION, SqliteDatabase
from rollbackd.daemon.rollback.effects import cleared_effect, downgrade_effect, snapshot_effect
from rollbackd.daemon.rollback.encrypted_columns import clear_sqlite, clear_step, count_sqlite, describe
from rollbackd.daemon.rollback.receipts import command_effect, run_recorded
from rollbackd.daemon.rollback.sqlite_swap import kept_since, stage, staged_path, swap_in
from rollbackd.daemon.rollback.store_wiring import StoreWiring
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

log = logging.getLogger("rollbackd.rollback.sqlite")

DB = Component.DATABASE


class SqliteExecutor(StoreWiring):
    component: ClassVar[Component] = DB
    backend: ClassVar[str] = "sqlite"

    def __init__(self, settings: SqliteDatabase) -> None:
        self.settings = settings
        self.path = settings.path
        self.backuper = SqliteBackuper(settings.path, list(settings.tables),
                                       settings.timestamp_column, settings.alembic_table)
        self._store: BackupStore | None = None
        t = settings.command_timeout
        self.restore_steps: tuple[StepSpec, ...] = (
            StepSpec("prepare_restore", idempotent=True, timeout=900, component=DB),
            # Stops the app, keeps the damaged file, puts the staged copy in place: once begun
            # it must not run again blindly, so an interrupted one waits for a person.
            StepSpec("swap_database", idempotent=False, timeout=2 * t + 30, destructive=True,
                     component=DB),
            StepSpec("check_restored", idempotent=True, timeout=900, component=DB),
            StepSpec("start_app", idempotent=True, timeout=t, component=DB),
        )
        self.downgrade_steps: tuple[StepSpec, ...] = (
            StepSpec("snapshot_database", idempotent=True, timeout=900, component=DB),
            StepSpec("alembic_downgrade", idempotent=False, timeout=t, destructive=True,
                     component=DB),
            StepSpec("check_revision", idempotent=True, timeout=60, component=DB),
        )
        self.clear_steps = (clear_step(DB, t),)

    # -- wiring ---------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        caps: dict[Capability, tuple[StepSpec, ...]] = {}
        if self.settings.stop and self.settings.start:  # never swap a file under a running app
            caps[Capability.DATABASE_RESTORE] = self.restore_steps
        if self.settings.migrate:
            caps[Capability.DATABASE_DOWNGRADE] = self.downgrade_steps
        if self.settings.encrypted_columns:
            caps[Capability.DATABASE_CLEAR_ENCRYPTED] = self.clear_steps
        return caps

    # -- what the checklist asks of every executor --------------------------------------------

    async def current_version(self) -> str | None:
        return await asyncio.to_thread(self._live_revision)

    def _live_revision(self) -> str | None:
        try:
            with closing(open_live(self.path, 5.0)) as conn:
                return alembic_revision(conn, self.settings.alembic_table)
        except sqlite3.DatabaseError:
            return None

    async def evidence(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._evidence)

    def _evidence(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": str(self.path), "exists": self.path.exists()}
        if not self.path.exists():
            return found
        found["size"] = self.path.stat().st_size
        found["side_files"] = [s for s in SIDE_FILES if Path(f"{self.path}{s}").exists()]
        try:
            with closing(open_live(self.path, 5.0)) as conn:
                row = conn.execute("PRAGMA quick_check(5)").fetchall()
                found["quick_check"] = "; ".join(str(r[0]) for r in row)[:500]
                found["alembic_revision"] = alembic_revision(conn, self.settings.alembic_table)
        except sqlite3.DatabaseError as exc:
            found["error"] = str(exc)
        if self._store is not None:
            newest = self._store.newest_verified("database")
            found["newest_verified_backup"] = (
                f"{newest.describe()} at {newest.created_at:%Y-%m-%d %H:%M:%S} UTC"
                if newest else None)
        return found

    async def backup_current(self, ctx: StepContext) -> str:
        return await self.take_current(ctx, "backed up as")

    async def verify_target(self, ctx: StepContext) -> str:
        names = {s.name for s in ctx.plan.steps}
        details = []
        if "swap_database" in names:
            b = await self._checked(ctx)
            details.append(f"backup #{b.id} of {b.created_at:%H:%M:%S} is verified and its "
                           f"checksum holds (sha256 {b.sha256[:12]})")
        if "alembic_downgrade" in names:
            rev = self._revision(ctx)
            details.append(f"downgrade to {rev} with {Path(self._migrate(rev)[0]).name}")
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
            raise StepFailed(f"sqlite executor has no step {name!r}")
        result: str = await step(ctx)
        return result

    # -- after a crash: did the step's effect happen? -----------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "prepare_restore":
            return await asyncio.to_thread(self._staged_effect, ctx)
        if name == "swap_database":
            return await asyncio.to_thread(self._swap_effect, ctx, since)
        if name == "start_app":
            return command_effect(ctx, name, since)
        if name == "snapshot_database":
            return snapshot_effect(self.store, ctx)
        if name == "alembic_downgrade":
            return downgrade_effect(await self.current_version(), self._revision(ctx), ctx)
        if name == "clear_encrypted":
            return cleared_effect(await asyncio.to_thread(
                count_sqlite, self.path, list(self.settings.encrypted_columns)))
        return CHECK_ONLY

    def _staged_effect(self, ctx: StepContext) -> Effect:
        b = self.store.get(ctx.backup_of(DB))
        staged = self.staged(ctx.backup_of(DB))
        if not staged.exists():
            return absent(f"no staged copy {staged.name}")
        if b is None or checksum(staged)[0] != b.sha256:
            return absent(f"the staged copy {staged.name} is incomplete (its checksum is not "
                          "the backup's): it is staged again")
        return done(f"{staged.name} is staged and its checksum is backup #{b.id}'s")

    def _swap_effect(self, ctx: StepContext, since: datetime) -> Effect:
        backup_id = ctx.backup_of(DB)
        staged, kept = self.staged(backup_id), kept_since(self.path, since)
        if not staged.exists() and kept is not None:
            return done(f"the live {self.path.name} is backup #{backup_id}'s staged copy; the "
                        f"replaced file is kept as {kept.name}")
        stop = command_effect(ctx, "swap_database.stop", since)
        if staged.exists() and kept is None:
            if stop.found is Found.ABSENT:
                return absent(f"the staged copy {staged.name} is not in place yet and the app "
                              "was not stopped")
            return unknown(f"the staged copy {staged.name} is not in place, but the stop "
                           f"command ran ({stop.what}): the app may be down")
        return unknown(f"the staged copy {staged.name} "
                       f"{'is still there' if staged.exists() else 'is gone'} and "
                       f"{'a kept file ' + kept.name if kept else 'no kept file'} is there: "
                       "the swap may be half done")

    # -- what a restore would lose ------------------------------------------------------------

    async def writes_since(self, backup_id: int) -> int | None:
        b = self._store.get(backup_id) if self._store else None
        before = b.versions.get("tables") if b else None
        if not before:
            return None
        return await asyncio.to_thread(count_writes, self.path, dict(before),
                                       self.settings.timestamp_column, 5.0)

    # -- restore --------------------------------------------------------------------------


    async def _checked(self, ctx: StepContext) -> StoredBackup:
        try:
            return await self.store.checked(ctx.backup_of(DB), "database")
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None

    def staged(self, backup_id: int) -> Path:
        return staged_path(self.path, backup_id)

    async def _prepare(self, ctx: StepContext) -> str:
        b = self.store.get(ctx.backup_of(DB))
        if b is None or not b.verified:
            raise StepFailed(f"backup #{ctx.backup_of(DB)} is not a verified database backup")
        try:
            return await asyncio.to_thread(stage, self.path, b, self.settings.alembic_table)
        except BackupRefused as exc:
            self.store.mark_unusable(b, str(exc))
            raise StepFailed(f"backup #{b.id}: {exc}; refusing to restore it") from None

    def swap(self, staged: Path) -> tuple[Path, list[str], float]:
        return swap_in(self.path, staged)

    async def _swap_step(self, ctx: StepContext) -> str:
        backup_id = ctx.backup_of(DB)
        staged = self.staged(backup_id)
        if not staged.exists():
            raise StepFailed(f"the staged copy {staged.name} is missing: prepare_restore must "
                             "run first; nothing was changed")
        s = self.settings
        assert s.stop is not None
        await run_recorded(ctx, "swap_database.stop", s.stop, s.command_timeout)
        try:
            # Deliberately on the event loop: a thread hop would lengthen the critical path,
            # and these few syscalls do not wait on anything but the directory's fsync.
            kept, moved, seconds = self.swap(staged)
        except OSError as exc:
            await self._start_quietly()
            raise StepFailed(f"swapping in backup #{backup_id} failed ({exc.strerror}); the "
                             "current database is in place again and the app was started")\
                from None
        log.info("target=%s path=%s backup=%d status=swapped critical_path=%.2fms kept=%s",
                 ctx.target, self.path, backup_id, seconds * 1000, kept.name)
        sides = f" with {', '.join(moved)}" if moved else ""
        was = f"the replaced file is kept as {kept.name}{sides}" if kept.exists() else \
            "there was no file to keep"
        return (f"app stopped; backup #{backup_id} in place in {seconds * 1000:.2f} ms "
                f"(app stopped -> file in place); {was}")

    async def _start_quietly(self) -> None:
        assert self.settings.start is not None
        try:
            await run_argv(self.settings.start, self.settings.command_timeout)
        except StepFailed as exc:
            log.error("path=%s status=start-failed reason=%r", self.path, str(exc))

    async def _check_restored(self, ctx: StepContext) -> str:
        b = self.store.get(ctx.backup_of(DB))
        expected = b.versions.get("alembic_revision") if b else None
        problem, rev = await asyncio.to_thread(self._check_live)
        if problem:
            raise StepFailed(f"the restored {self.path.name} fails its check: {problem}")
        if expected and rev != expected:
            raise StepFailed(f"alembic_version of the restored file is {rev}, the backup held "
                             f"{expected}")
        return f"integrity_check ok; alembic_version {rev}"

    def _check_live(self) -> tuple[str | None, str | None]:
        # Immutable while the app is stopped: creates no -wal/-shm owned by us beside its file.
        try:
            with closing(open_copy(self.path)) as conn:
                return integrity_problem(conn), alembic_revision(conn,
                                                                 self.settings.alembic_table)
        except sqlite3.DatabaseError as exc:
            return str(exc), None

    async def _start(self, ctx: StepContext) -> str:
        assert self.settings.start is not None
        res = await run_recorded(ctx, "start_app", self.settings.start,
                                 self.settings.command_timeout)
        return f"app started with {Path(self.settings.start[0]).name} (exit {res.returncode})"

    # -- Alembic downgrade ----------------------------------------------------------------------

    def _revision(self, ctx: StepContext) -> str:
        rev = ctx.target_of("revision")
        if not REVISION.match(rev):
            raise StepFailed(f"refusing the revision {rev[:40]!r}: not an Alembic revision id")
        return rev

    def _migrate(self, rev: str) -> list[str]:
        if self.settings.migrate is None:
            raise StepFailed("no migrate argv is configured for the database")
        return [a.replace("{revision}", rev) for a in self.settings.migrate]

    async def _snapshot(self, ctx: StepContext) -> str:
        mine = [b for b in self.store.for_incident("database", ctx.incident_id) if b.verified]
        if mine:
            return f"verified snapshot {mine[-1].describe()} was taken before any change"
        try:
            b = await self.store.take(self.backuper, f"incident-{ctx.incident_id}-snapshot",
                                      ctx.incident_id)
        except BackupFailed as exc:
            raise StepFailed(f"cannot snapshot the database: {exc}; not downgrading") from None
        if not b.verified:
            raise StepFailed(f"snapshot {b.describe()} did not verify: refusing to downgrade "
                             "without a verified snapshot")
        return f"verified snapshot {b.describe()}"

    async def _downgrade(self, ctx: StepContext) -> str:
        rev = self._revision(ctx)
        argv = self._migrate(rev)
        env = None
        if self.settings.env_file is not None:
            try:
                env = await asyncio.to_thread(read_env, self.settings.env_file)
            except OSError as exc:
                raise StepFailed(f"cannot read env file {self.settings.env_file}: "
                                 f"{exc.strerror}") from None
        res = await run_argv(argv, self.settings.command_timeout, cwd=self.settings.cwd, env=env)
        last = res.tail(1).strip()
        return f"{Path(argv[0]).name} downgrade to {rev}: exit 0" + (f" ({last})" if last else "")

    async def _check_revision(self, ctx: StepContext) -> str:
        rev = self._revision(ctx)
        now = await self.current_version()
        if now != rev:
            raise StepFailed(f"alembic_version is {now} after the downgrade, expected {rev}")
        return f"alembic_version is {rev}"

    # -- the key disaster ---------------------------------------------------------------------

    async def _clear_encrypted(self, ctx: StepContext) -> str:
        s = self.settings
        try:
            cleared = await asyncio.to_thread(clear_sqlite, self.path, list(s.encrypted_columns),
                                              s.command_timeout)
        except sqlite3.Error as exc:
            raise StepFailed(f"clearing the encrypted columns failed: {exc}; nothing was "
                             "changed") from None
        return f"set to NULL (undecryptable without the lost key): {describe(cleared)}"

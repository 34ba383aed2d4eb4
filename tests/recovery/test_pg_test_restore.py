"""The scheduled test restore of PostgreSQL dumps, against the real throwaway server: the newest
verified dump is restored into <db>_restoretest_<id> by the path a real restore takes, checked,
and dropped; a dump that does not restore becomes unusable; the live database is never touched."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

import rollbackd.daemon.backup.schedule as schedule
from rollbackd.daemon.backup.base import RestoreTestable, RestoreTestFailed
from rollbackd.daemon.backup.files import checksum
from rollbackd.daemon.backup.pg import PgError, derived_name
from rollbackd.daemon.backup.schedule import TargetBackups, attach_backups
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.control.commands.backups import shown as backup_shown
from rollbackd.daemon.control.ctl_output import RENDER
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.escalation.notices import Notice, NoticeKind
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.rollback.data_settings import BackupSettings, PostgresDatabase, SqliteDatabase
from rollbackd.daemon.rollback.postgres_restore import PostgresExecutor
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.policies.plans import Component
from tests.recovery.pg_support import admin, app_database, databases, rows

REV = "c0ffee"


@pytest.fixture
def live(postgresql_proc: PostgreSQLExecutor) -> Iterator[str]:
    """The app's live database (small: the tests are about the path, not the size)."""
    with app_database(postgresql_proc, "live", REV, users=40, grades=3000) as name:
        yield name


def pg_settings(proc: PostgreSQLExecutor, db: str, tmp: Path, port: int | None = None
                ) -> PostgresDatabase:
    dsn = tmp / f"dsn-{port or proc.port}"
    dsn.write_text(f"postgresql://{proc.user}@{proc.host}:{port or proc.port}/{db}\n")
    return PostgresDatabase(kind="postgres", dsn_file=str(dsn),  # type: ignore[arg-type]
                            tables=["users", "grades"], jobs=2)


class Told:
    def __init__(self) -> None:
        self.mails: list[tuple[str, str, str]] = []

    def __call__(self, notice: Notice) -> None:
        self.mails.append((notice.event.removeprefix("backup-"), notice.subject, notice.body))


class Rig:
    """The target's backups as the scheduler attaches them, with a busy flag, metrics, mail."""

    def __init__(self, journal: Journal, ex: PostgresExecutor, every: float = 86400) -> None:
        self.busy = False
        self.registry = CollectorRegistry()
        self.told = Told()
        backups = attach_backups(
            "grading", BackupSettings(test_restore_every=every), journal,
            {Component.DATABASE: ex}, lambda: self.busy, Metrics(self.registry), self.told)
        assert backups is not None
        self.backups: TargetBackups = backups
        self.store: BackupStore = backups.store

    def tests(self, result: str) -> float:
        return self.registry.get_sample_value("rollbackd_backup_restore_tests_total",
                                              {"target": "grading", "result": result}) or 0.0


@pytest.fixture
def ex(postgresql_proc: PostgreSQLExecutor, live: str, tmp_path: Path) -> PostgresExecutor:
    return PostgresExecutor(pg_settings(postgresql_proc, live, tmp_path))


async def test_a_scheduled_test_restore_passes_records_the_time_and_leaves_nothing_behind(
        postgresql_proc: PostgreSQLExecutor, live: str, journal: Journal,
        ex: PostgresExecutor) -> None:
    rig = Rig(journal, ex)
    assert rig.backups.testers == [("database", ex)]
    assert await rig.backups.test_restores() == {}  # nothing backed up yet: nothing to prove
    await rig.backups.run()
    b = rig.store.newest_verified("database")
    assert b is not None and b.restore_tested_at is None
    leftover = derived_name(live, "restoretest", "999")  # what a crash mid-test left behind
    with admin(postgresql_proc) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))

    assert await rig.backups.test_restores() == {"database": "passed"}

    tested = rig.store.get(b.id)
    assert tested is not None and tested.verified
    assert tested.restore_tested_at is not None and tested.restore_test_error is None
    assert rig.store.last_restore_test("database") == tested.restore_tested_at
    assert databases(postgresql_proc, f"{live}_") == []  # scratch and leftover dropped
    assert rows(postgresql_proc, live, "grades") == 3000
    assert rig.tests("passed") == 1 and rig.told.mails == []
    # Not due again until the period has passed since the pass; then the newest is proven.
    assert await rig.backups.test_restores() == {}
    assert rig.backups.first_test() == tested.restore_tested_at + timedelta(days=1)
    assert rig.store.due_for_restore_test(
        "database", 86400, tested.restore_tested_at + timedelta(days=1, seconds=1)) == tested
    shown = RENDER["backups"]([backup_shown(b) for b in journal.backups.of("grading")])
    assert "RESTORE_TEST" in shown and f"ok {tested.restore_tested_at:%Y-%m-%d}" in shown


async def test_a_garbled_dump_fails_its_test_restore_and_is_never_restored(
        postgresql_proc: PostgreSQLExecutor, live: str, journal: Journal,
        ex: PostgresExecutor) -> None:
    rig = Rig(journal, ex)
    await rig.backups.run()
    b = rig.store.newest_verified("database")
    assert b is not None
    # Cut the archive short and record the new checksum: the table of contents still reads
    # (pg_restore --list passes), the data does not; only restoring it tells.
    data = b.path.read_bytes()
    b.path.write_bytes(data[: len(data) * 2 // 3])
    digest, size = checksum(b.path)
    journal.db.execute("UPDATE backups SET sha256 = ?, size = ? WHERE id = ?",
                       (digest, size, b.id))
    assert await ex.backuper.verify(b.path) is None

    assert await rig.backups.test_restores() == {"database": "failed"}

    failed = rig.store.get(b.id)
    assert failed is not None and not failed.verified
    assert failed.restore_tested_at is not None
    assert failed.restore_test_error and "does not restore" in failed.restore_test_error
    assert failed.verify_error and failed.verify_error.startswith("test restore failed: ")
    assert rig.store.newest_verified("database") is None  # no restore picks it
    assert rig.store.last_restore_test("database") is None
    assert databases(postgresql_proc, f"{live}_") == []
    assert rows(postgresql_proc, live, "grades") == 3000
    assert rig.tests("failed") == 1
    ((event, subject, body),) = rig.told.mails
    assert event == f"restore-test-grading-database-{b.id}"
    assert f"backup #{b.id} failed its test restore" in subject
    assert "marked unusable" in body
    # The next look proves the next newest backup at once: a failure is no pass.
    await rig.backups.run()
    assert await rig.backups.test_restores() == {"database": "passed"}


async def test_row_counts_unlike_the_catalog_fail_and_the_scratch_database_is_dropped(
        postgresql_proc: PostgreSQLExecutor, live: str, journal: Journal,
        ex: PostgresExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(journal, ex)
    await rig.backups.run()
    b = rig.store.newest_verified("database")
    assert b is not None
    journal.db.execute("UPDATE backups SET versions = json_set(versions, "
                       "'$.tables.users.rows', 39) WHERE id = ?", (b.id,))
    scratch = derived_name(live, "restoretest", str(b.id))
    seen: list[list[str]] = []
    verify = ex._verify_db

    async def looking(name: str, expected: dict[str, Any], counts: bool = True) -> str | None:
        seen.append(await asyncio.to_thread(databases, postgresql_proc, f"{live}_"))
        return await verify(name, expected, counts)

    monkeypatch.setattr(ex, "_verify_db", looking)
    assert await rig.backups.test_restores() == {"database": "failed"}
    assert seen == [[scratch]]  # restored into the scratch database, never into the live one
    assert databases(postgresql_proc, f"{live}_") == []
    failed = rig.store.get(b.id)
    assert failed is not None and not failed.verified
    assert "table users has 40 rows, the backup held 39" in (failed.restore_test_error or "")
    assert rows(postgresql_proc, live, "users") == 40


async def test_skipped_while_a_rollback_runs_and_stopped_when_one_starts(
        postgresql_proc: PostgreSQLExecutor, live: str, journal: Journal,
        ex: PostgresExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(journal, ex)
    await rig.backups.run()
    b = rig.store.newest_verified("database")
    assert b is not None
    rig.busy = True
    assert await rig.backups.test_restores() == {}
    assert databases(postgresql_proc, f"{live}_") == []

    # A rollback starts while the test restore checks the scratch database: it is cancelled.
    rig.busy = False
    monkeypatch.setattr(schedule, "BUSY_POLL", 0.02)
    verifying = asyncio.Event()

    async def slow(name: str, expected: dict[str, Any], counts: bool = True) -> str | None:
        verifying.set()
        await asyncio.Event().wait()  # until cancelled
        return None

    monkeypatch.setattr(ex, "_verify_db", slow)
    run = asyncio.ensure_future(rig.backups.test_restores())
    await asyncio.wait_for(verifying.wait(), 30)
    assert databases(postgresql_proc, f"{live}_restoretest_") != []
    rig.busy = True
    assert await asyncio.wait_for(run, 30) == {"database": "cancelled"}
    assert databases(postgresql_proc, f"{live}_") == []
    kept = rig.store.get(b.id)
    assert kept is not None and kept.verified and kept.restore_tested_at is None
    assert rig.tests("passed") == rig.tests("failed") == rig.tests("error") == 0


async def test_a_cancelled_test_restore_drops_its_scratch_database(
        postgresql_proc: PostgreSQLExecutor, live: str, store: BackupStore,
        ex: PostgresExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    ex.attach(store)
    b = await store.take(ex.backuper)
    verifying = asyncio.Event()

    async def slow(name: str, expected: dict[str, Any], counts: bool = True) -> str | None:
        verifying.set()
        await asyncio.Event().wait()
        return None

    monkeypatch.setattr(ex, "_verify_db", slow)
    task = asyncio.ensure_future(ex.test_restore(b))
    await asyncio.wait_for(verifying.wait(), 30)
    assert databases(postgresql_proc, f"{live}_restoretest_") == [
        derived_name(live, "restoretest", str(b.id))]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert databases(postgresql_proc, f"{live}_") == []


async def test_a_test_that_cannot_reach_the_server_condemns_no_backup(
        postgresql_proc: PostgreSQLExecutor, live: str, journal: Journal,
        ex: PostgresExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = Rig(journal, ex)
    await good.backups.run()
    b = good.store.newest_verified("database")
    assert b is not None
    down = PostgresExecutor(pg_settings(postgresql_proc, live, tmp_path, port=free_port()))
    with pytest.raises(PgError):
        await down.test_restore(b)
    rig = Rig(journal, down)
    assert await rig.backups.test_restores() == {"database": "error"}
    kept = rig.store.get(b.id)
    assert kept is not None and kept.verified and kept.restore_tested_at is None
    assert rig.tests("error") == 1 and rig.told.mails == []
    # A cheap error is tried again at the next look; one that cost real work (a full disk, a
    # timeout) waits a whole period, so the server is not loaded again at every look.
    assert await rig.backups.test_restores() == {"database": "error"}
    monkeypatch.setattr(schedule, "COSTLY", -1.0)
    assert await rig.backups.test_restores() == {"database": "error"}
    assert await rig.backups.test_restores() == {}
    later = datetime.now(UTC) + timedelta(days=1, seconds=1)
    assert await rig.backups.test_restores(later) == {"database": "error"}
    assert rig.tests("error") == 4


async def test_a_broken_archive_raises_restore_test_failed(
        postgresql_proc: PostgreSQLExecutor, live: str, store: BackupStore,
        ex: PostgresExecutor) -> None:
    ex.attach(store)
    b = await store.take(ex.backuper)
    b.path.write_bytes(b"PGDMP" + b"\x00" * 64)
    with pytest.raises(RestoreTestFailed, match=f"backup #{b.id} does not restore"):
        await ex.test_restore(b)
    assert databases(postgresql_proc, f"{live}_") == []


def test_only_postgres_dumps_are_test_restored(tmp_path: Path, journal: Journal,
                                               postgresql_proc: PostgreSQLExecutor) -> None:
    lite = SqliteExecutor(SqliteDatabase(kind="sqlite", path=tmp_path / "app.db"))
    assert not isinstance(lite, RestoreTestable)  # its copy passed integrity_check when taken
    found = attach_backups("grading", BackupSettings(), journal, {Component.DATABASE: lite},
                           lambda: False)
    assert found is not None and found.testers == []
    pg = PostgresExecutor(pg_settings(postgresql_proc, "nothere", tmp_path))
    assert isinstance(pg, RestoreTestable)
    off = attach_backups("grading", BackupSettings(test_restore_every=0), journal,
                         {Component.DATABASE: pg}, lambda: False)
    assert off is not None and off.testers == []  # 0 turns it off
    six_hours = BackupSettings.model_validate({"interval": "1h", "test_restore_every": "6h"})
    on = attach_backups("grading", six_hours, journal, {Component.DATABASE: pg}, lambda: False)
    assert on is not None and on.testers == [("database", pg)] and on.test_check == 3600


async def test_the_scheduler_gives_test_restores_a_job_of_their_own(
        journal: Journal, ex: PostgresExecutor) -> None:
    mailed: list[tuple[Any, ...]] = []
    monitor = SimpleNamespace(
        name="grading", journal=journal, components={Component.DATABASE: ex}, busy=False,
        config=SimpleNamespace(backups=BackupSettings(interval=600, test_restore_every=3600)),
        outbox=SimpleNamespace(send=lambda *a: mailed.append(a)))
    probes = ProbeScheduler(Metrics(CollectorRegistry()))
    probes.schedule_backups(monitor)  # type: ignore[arg-type]
    jobs = {j.id: j for j in probes.scheduler.get_jobs()}
    assert set(jobs) == {"grading/backups", "grading/restore-test"}
    job = jobs["grading/restore-test"]
    assert job.trigger.interval == timedelta(seconds=600) and job.max_instances == 1
    backups: TargetBackups = job.func.__self__
    assert backups.testers == [("database", ex)] and backups.metrics is probes.metrics
    assert backups.tell is not None
    notice = Notice(NoticeKind.BACKUP, "subject", "body", key="restore-test-grading-database-1")
    backups.tell(notice)
    assert mailed == [(notice,)]

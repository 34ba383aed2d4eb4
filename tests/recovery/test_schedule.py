"""Scheduled backups: every backed-up executor gets the target's store; restarts do not pile up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rollbackd.daemon.backup.schedule import attach_backups
from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.rollback.data_settings import BackupSettings
from rollbackd.daemon.rollback.key_restore import KeyExecutor
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor
from rollbackd.policies.plans import Component
from tests.recovery.support import key_settings, sqlite_settings


def executors(tmp_path: Path) -> dict[Component, object]:
    ws = Workspace.create(tmp_path / "ws")
    return {Component.DATABASE: SqliteExecutor(sqlite_settings(ws)),
            Component.KEY: KeyExecutor(key_settings(ws, canary=None)),
            Component.DEPLOYMENT: object()}  # not backed up: left alone


async def test_a_pass_backs_up_every_kind_then_the_next_waits_an_interval(
        tmp_path: Path, journal: Journal) -> None:
    busy = [False]
    backups = attach_backups("grading", BackupSettings(interval=600), journal,
                             executors(tmp_path), lambda: busy[0])
    assert backups is not None
    assert [b.kind for b in backups.backupers] == ["database", "key"]
    now = datetime.now(UTC)
    assert backups.first_run(now) == now  # nothing verified yet: at once
    await backups.run()
    kinds = sorted((r.kind, r.verified) for r in journal.backups.of("grading"))
    assert kinds == [("database", True), ("key", True)]
    newest = max(backups.store.newest_verified(k).created_at  # type: ignore[union-attr]
                 for k in ("database", "key"))
    assert newest + timedelta(seconds=599) < backups.first_run(now) <= newest + \
        timedelta(seconds=601)
    busy[0] = True  # a rollback runs: its own checklist backs up, the schedule stands aside
    await backups.run()
    assert len(journal.backups.of("grading")) == 2


async def test_a_target_without_data_has_no_backup_job(journal: Journal) -> None:
    assert attach_backups("web", BackupSettings(), journal, {Component.DEPLOYMENT: object()},
                          lambda: False) is None

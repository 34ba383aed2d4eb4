"""A target's scheduled backups: each backed-up executor gets the store; a job backs them up."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.backup.base import BacksUp, Backuper, BackupFailed
from daemon.backup.store import BackupStore
from daemon.journal.store import Journal
from daemon.rollback.data_settings import BackupSettings

log = logging.getLogger("rollbackd.backup")


class TargetBackups:
    def __init__(self, store: BackupStore, backupers: Sequence[Backuper], interval: float,
                 busy: Callable[[], bool]) -> None:
        self.store = store
        self.backupers = list(backupers)
        self.interval = interval
        self.busy = busy
        """True while the target runs a rollback: its own backup_current step backs up then."""

    @property
    def target(self) -> str:
        return self.store.target

    def first_run(self, now: datetime | None = None) -> datetime:
        """Now, unless every kind has a verified backup younger than the interval: a restarted
        daemon does not pile up backups."""
        now = now or datetime.now(UTC)
        due = [now]
        for b in self.backupers:
            newest = self.store.newest_verified(b.kind)
            if newest is None:
                return now
            due.append(newest.created_at + timedelta(seconds=self.interval))
        return max(due)

    async def run(self) -> None:
        """One scheduled pass; never raises (a failed backup is logged, the next pass retries)."""
        if self.busy():
            log.info("target=%s backup=scheduled status=skipped reason=rollback running",
                     self.target)
            return
        for b in self.backupers:
            try:
                await self.store.take(b)
            except BackupFailed as exc:
                log.error("target=%s backup=%s status=failed reason=%r", self.target, b.kind,
                          str(exc))
            except Exception:  # the daemon outlives a broken backup method
                log.exception("target=%s backup=%s status=crashed", self.target, b.kind)
            try:
                await self.store.enforce_retention(b.kind)
            except Exception:
                log.exception("target=%s backup=%s status=retention-failed", self.target,
                              b.kind)


def attach_backups(target: str, settings: BackupSettings, journal: Journal,
                   components: Mapping[Any, Any], busy: Callable[[], bool]) -> TargetBackups | None:
    """Give every backed-up executor of the target its store under state_dir/backups."""
    store = BackupStore(journal, journal.path.parent / "backups", target, settings.keep)
    backupers: list[Backuper] = []
    for executor in components.values():
        if isinstance(executor, BacksUp):
            executor.attach(store)
            backupers += executor.backupers()
    return TargetBackups(store, backupers, settings.interval, busy) if backupers else None

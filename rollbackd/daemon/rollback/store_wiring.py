"""The backup-store wiring every data executor shares: the scheduler attaches the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rollbackd.daemon.backup.base import Backuper, BackupFailed
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback.base import StepContext, StepFailed


class StoreWiring:
    backend: ClassVar[str]
    backuper: Backuper
    _store: BackupStore | None = None

    def backupers(self) -> Sequence[Backuper]:
        return [self.backuper]

    def attach(self, store: BackupStore) -> None:
        self._store = store

    @property
    def store(self) -> BackupStore:
        if self._store is None:
            raise StepFailed(f"no backup store is attached to the {self.backend} executor")
        return self._store

    async def take_current(self, ctx: StepContext, done: str) -> str:
        """The checklist's backup of the live database before anything changes; a failed one
        stops the plan, and a copy that fails verification is still kept as evidence."""
        try:
            b = await self.store.take(self.backuper, f"incident-{ctx.incident_id}",
                                      ctx.incident_id)
        except BackupFailed as exc:
            raise StepFailed(f"cannot back up the current database: {exc}; nothing was "
                             "changed") from None
        note = "" if b.verified else " - kept as evidence of the damaged state"
        return f"current database {done} {b.describe()}{note}"

"""The backup-store wiring every data executor shares: the scheduler attaches the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from daemon.backup.base import Backuper
from daemon.backup.store import BackupStore
from daemon.rollback.base import StepFailed


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

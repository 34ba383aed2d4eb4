"""The backup_freshness probe's view of the daemon's own journal, on either backend."""

from __future__ import annotations

from rollbackd.daemon.journal.catalog import BackupCatalog
from rollbackd.probes.backup_freshness import VerifiedBackups, summarize


class JournalBackups:
    """A rollbackd.probes.backup_freshness.BackupSource backed by the journal's backup catalog. Read on
    the daemon's loop, like every other use of the journal's one connection."""

    def __init__(self, catalog: BackupCatalog) -> None:
        self.catalog = catalog

    async def verified_backups(self, target: str, kind: str | None) -> VerifiedBackups:
        return summarize(self.catalog.verified_created_at(target, kind))

"""The journal: owner of the one connection, its migrations and the repositories over it."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rollbackd.daemon.journal.audit import AuditLog, load_key
from rollbackd.daemon.journal.breakers import Breakers
from rollbackd.daemon.journal.catalog import BackupCatalog
from rollbackd.daemon.journal.db import Database, JournalError
from rollbackd.daemon.journal.escalations import Escalations
from rollbackd.daemon.journal.incidents import Incidents
from rollbackd.daemon.journal.ledger import Ledger
from rollbackd.daemon.journal.mail import Mail
from rollbackd.daemon.journal.overrides import Overrides
from rollbackd.daemon.journal.schema import AUDIT_KEYED, MIGRATIONS
from rollbackd.daemon.journal.steps import Steps


class Repositories:
    """Every table group's repository over one connection: the daemon's own, or the separate
    read-only one a metrics scrape opens (which writes nothing, so needs no audit key)."""

    def __init__(self, db: Database) -> None:
        self.incidents = Incidents(db)
        """Incidents and their timelines."""
        self.steps = Steps(db, self.incidents)
        self.ledger = Ledger(db)
        """The known-good ledger."""
        self.backups = BackupCatalog(db)
        self.breakers = Breakers(db)
        self.overrides = Overrides(db)
        self.mail = Mail(db)
        """The outbox, storm-held mail and digests."""
        self.escalations = Escalations(db)
        """Escalation ladders (tiers)."""


class Journal(Repositories):
    """One SQLite (WAL) database under the state directory, or PostgreSQL through `db` (a
    rollbackd/daemon/journal/pg.py PgConnection); either way `path.parent` is the state directory, which
    holds the audit key unless systemd hands it in as a credential."""

    def __init__(self, path: Path, db: Any = None) -> None:
        self.path = path
        if db is None:
            db = self._open_sqlite(path)
        self.database = Database(db)
        self.db = self.database.conn
        super().__init__(self.database)
        self.audit = AuditLog(self.database, load_key(path.parent))
        self._migrate()

    @staticmethod
    def _open_sqlite(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        # isolation_level=None: we issue BEGIN ourselves so every write is one explicit commit.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(path, 0o600)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a step journaled as running must be on disk before the step starts.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise JournalError(
                f"{self.path}: schema version {version} is newer than this rollbackd "
                f"understands ({len(MIGRATIONS)}); upgrade rollbackd"
            )
        for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.tx():
                for stmt in sql.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                if i == AUDIT_KEYED:
                    self.audit.sign_legacy()
                self.db.execute(f"PRAGMA user_version={i}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self.database.tx() as db:
            yield db

    def close(self) -> None:
        self.db.close()

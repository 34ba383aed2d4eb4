"""The backup catalog: every backup taken, where it is, whether it verified, its test restores."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.policies.targets import BackupEntry


@dataclass(frozen=True)
class StoredBackup:
    """One catalog row."""

    id: int
    target: str
    kind: str
    path: Path
    created_at: datetime
    size: int
    sha256: str
    verified: bool
    verify_error: str | None
    duration: float
    versions: Mapping[str, Any]
    restore_tested_at: datetime | None = None
    """When its last test restore ran (RestoreTestable); with restore_test_error, it failed."""
    restore_test_error: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredBackup:
        return cls(
            id=int(row["id"]), target=row["target"], kind=row["kind"], path=Path(row["path"]),
            created_at=datetime.fromisoformat(row["created_at"]), size=int(row["size"] or 0),
            sha256=row["sha256"] or "", verified=row["verified_at"] is not None,
            verify_error=row["verify_error"], duration=float(row["duration"] or 0.0),
            versions=json.loads(row["versions"] or "{}"),
            restore_tested_at=dt(row["restore_tested_at"]),
            restore_test_error=row["restore_test_error"],
        )

    @property
    def incident(self) -> int | None:
        """The incident this backup was taken for (kept as evidence), if any."""
        value = self.versions.get("incident")
        return int(value) if value is not None else None

    def describe(self) -> str:
        state = "verified" if self.verified else f"NOT verified: {self.verify_error}"
        rev = self.versions.get("alembic_revision")
        fp = self.versions.get("fingerprint")
        held = f", revision {rev}" if rev else f", key {fp}" if fp else ""
        return f"#{self.id} ({_size(self.size)}{held}, {state})"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@dataclass(frozen=True)
class RestoreTests:
    """Per (target, kind): when a scheduled test restore last passed, and last failed."""

    passed: dict[tuple[str, str], datetime]
    failed: dict[tuple[str, str], datetime]


class BackupCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, target: str, kind: str, path: str, size: int, sha256: str, duration: float,
            versions: dict[str, Any], verified: bool, verify_error: str | None = None) -> int:
        with self.db.tx() as db:
            cur = db.execute(
                "INSERT INTO backups (target, kind, path, created_at, size, sha256, verified_at,"
                " versions, verify_error, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (target, kind, path, ts(now_utc()), size, sha256,
                 ts(now_utc()) if verified else None, json.dumps(versions), verify_error,
                 duration),
            )
        return int(cur.lastrowid or 0)

    def get(self, backup_id: int) -> StoredBackup | None:
        row = self.db.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone()
        return StoredBackup.from_row(row) if row is not None else None

    def of(self, target: str, kind: str | None = None) -> list[StoredBackup]:
        """The target's backups (of `kind`), oldest first."""
        sql, args = "SELECT * FROM backups WHERE target = ?", [target]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        rows = self.db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [StoredBackup.from_row(r) for r in rows]

    def entries(self, target: str, kind: str) -> tuple[BackupEntry, ...]:
        """The backups as the policies see them (restore targets)."""
        return tuple(
            BackupEntry(b.id, b.created_at, b.verified, True, b.versions.get("alembic_revision"),
                        incident=b.versions.get("incident"))
            for b in self.of(target, kind))

    def forget(self, backup_id: int) -> None:
        with self.db.tx() as db:
            db.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    def mark_unusable(self, backup_id: int, why: str) -> None:
        """Its file changed or vanished since it was verified: it no longer counts as verified."""
        with self.db.tx() as db:
            db.execute("UPDATE backups SET verified_at = NULL, verify_error = ? WHERE id = ?",
                       (why, backup_id))

    def record_restore_test(self, backup_id: int, error: str | None, at: datetime) -> None:
        """A scheduled test restore ran at `at`; `error` None: it passed."""
        with self.db.tx() as db:
            db.execute("UPDATE backups SET restore_tested_at = ?, restore_test_error = ?"
                       " WHERE id = ?", (ts(at), error, backup_id))

    # -- for the backup_freshness probe and the metrics ---------------------------------------

    def verified_created_at(self, target: str, kind: str | None) -> list[str]:
        """The created_at text of every verified backup of the target (of `kind`)."""
        sql = ("SELECT created_at FROM backups WHERE target = ? AND verified_at IS NOT NULL"
               " AND verified_at != ''")
        args = [target]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        return [str(r[0]) for r in self.db.execute(sql, args)]

    def newest_verified(self) -> dict[tuple[str, str], datetime]:
        """Per (target, kind), when the newest verified backup was created."""
        newest: dict[tuple[str, str], datetime] = {}
        # Compared after parsing: ISO text with different offsets does not sort as text.
        for target, kind, created in self.db.execute(
                "SELECT target, kind, created_at FROM backups"
                " WHERE verified_at IS NOT NULL AND verified_at != ''"):
            at = dt(created)
            if at is not None and ((target, kind) not in newest or at > newest[(target, kind)]):
                newest[(target, kind)] = at
        return newest

    def restore_tests(self) -> RestoreTests:
        last: dict[bool, dict[tuple[str, str], datetime]] = {True: {}, False: {}}
        for target, kind, tested, error in self.db.execute(
                "SELECT target, kind, restore_tested_at, restore_test_error FROM backups"
                " WHERE restore_tested_at IS NOT NULL"):
            at, seen = dt(tested), last[error is None]
            if at is not None and ((target, kind) not in seen or at > seen[(target, kind)]):
                seen[(target, kind)] = at
        return RestoreTests(last[True], last[False])

"""The one shape every backup method has, what it returns, and the errors the store raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from rollbackd.daemon.journal.catalog import StoredBackup as StoredBackup  # the catalog row

BackupKind = Literal["database", "key", "sessions"]


class BackupFailed(Exception):
    """No backup was taken (source unreadable, disk full); nothing was cataloged."""


class BackupRefused(Exception):
    """A cataloged backup must not be restored: missing, never verified, or its checksum changed."""


class RestoreTestFailed(Exception):
    """A verified backup did not survive its test restore (it does not restore, or restores into
    something other than what the catalog says it held): it must not count any more."""


@dataclass(frozen=True)
class BackupResult:
    versions: Mapping[str, Any] = field(default_factory=dict)
    """What the copy holds (alembic_revision, key fingerprint, per-table figures)."""


class Backuper(Protocol):
    """One backup method (SQLite online backup, pg_dump, a key file copy, a Redis key dump).

    `backup` writes one file or one directory at `dest` (which does not exist yet); the store
    owns the name, permissions, checksum and catalog. `verify` looks at a finished copy only.
    """

    kind: BackupKind
    suffix: str
    """File name suffix of a copy, e.g. ".sqlite3", ".key", ".dump"."""

    async def backup(self, dest: Path) -> BackupResult: ...

    async def verify(self, path: Path) -> str | None:
        """None when the copy is sound, else why not (one line, never a secret)."""
        ...


@runtime_checkable
class SizedSource(Protocol):
    """A backup method that can tell, before copying, about how many bytes a copy takes."""

    def source_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class BackupFailure:
    """The last scheduled backup of a kind failed (until one of that kind succeeds)."""

    at: datetime
    reason: str


def mib(n: int) -> str:
    """A size in words a person reads: MiB, or KiB below one MiB (never "0.0 MiB")."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{max(n, 0) / 2**10:.0f} KiB"


@runtime_checkable
class CountsLosses(Protocol):
    """A database executor that can tell how many writes restoring a backup would lose."""

    async def writes_since(self, backup_id: int) -> int | None: ...


@runtime_checkable
class RestoreTestable(Protocol):
    """A database executor whose dumps are proven by a scheduled test restore into a scratch
    database. Copies already checked whole when taken (SQLite's integrity_check) do without.

    `test_restore` returns what it proved (one line); raises RestoreTestFailed when the backup
    is at fault, any other exception when the test could not be run (the server is down).
    """

    async def test_restore(self, b: StoredBackup) -> str: ...

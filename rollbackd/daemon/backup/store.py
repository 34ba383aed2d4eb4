"""The backup store: takes a backup, checksums and verifies it, then catalogs it; retention."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

from rollbackd.daemon.backup.base import (
    Backuper,
    BackupFailed,
    BackupFailure,
    BackupRefused,
    SizedSource,
    StoredBackup,
    mib,
)
from rollbackd.daemon.backup.files import (
    checksum,
    free_bytes,
    fsync_dir,
    fsync_tree,
    make_private,
    no_space,
    private_dir,
    remove,
)
from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.store import Journal
from rollbackd.policies.lifecycle import OPEN_STATES

log = logging.getLogger("rollbackd.backup")

DEFAULT_KEEP = 7 * 86400.0
PARTIAL_AGE = 6 * 3600.0
"""A .partial file this old is no backup in progress: a crash left it."""
EVIDENCE = "evidence"
"""In the file name of a backup taken for an incident: it is kept as evidence, not a copy for
later restores, and a person looking at the directory must see so."""


class BackupStore:
    """One target's backups under root/<target>/<kind>/ (dirs 0700, files 0600)."""

    def __init__(self, journal: Journal, root: Path, target: str,
                 keep: float = DEFAULT_KEEP) -> None:
        self.journal = journal
        self.root = root
        self.target = target
        self.keep = keep
        self._lock = asyncio.Lock()
        """One backup or retention pass at a time per target: they share the directories."""
        self.failures: dict[str, BackupFailure] = {}
        """Kinds whose last scheduled backup failed (in memory; the next success clears it)."""

    def directory(self, kind: str) -> Path:
        return self.root / self.target / kind

    def _private_dirs(self, kind: str) -> Path:
        for d in (self.root, self.root / self.target):
            private_dir(d)
        return private_dir(self.directory(kind))

    # -- taking ---------------------------------------------------------------------------

    async def take(self, backuper: Backuper, reason: str = "scheduled",
                   incident: int | None = None) -> StoredBackup:
        """Back up, checksum, verify, and only then catalog (as verified or not, with why)."""
        async with self._lock:
            return await self._take(backuper, reason, incident)

    async def _take(self, backuper: Backuper, reason: str, incident: int | None) -> StoredBackup:
        now = now_utc()
        try:
            d = await asyncio.to_thread(self._private_dirs, backuper.kind)
        except OSError as exc:
            raise BackupFailed(f"cannot create {self.directory(backuper.kind)}: "
                               f"{exc.strerror}") from None
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", reason)
        if incident is not None:
            slug = f"{EVIDENCE}-{slug}"
        stem = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{slug}"
        final, n = d / f"{stem}{backuper.suffix}", 1
        while final.exists() or (d / f".{final.name}.partial").exists():  # never replace one
            n += 1
            final = d / f"{stem}-{n}{backuper.suffix}"
        partial = d / f".{final.name}.partial"
        need = backuper.source_bytes() if isinstance(backuper, SizedSource) else None
        free = await asyncio.to_thread(free_bytes, d) if need is not None else 0
        if need is not None and need > free:  # fail before writing, in words a person reads
            raise BackupFailed(f"backup directory full: needs {mib(need)}, {mib(free)} free "
                               f"({d})")
        started = time.monotonic()
        try:
            result = await backuper.backup(partial)
            if not partial.exists():
                raise BackupFailed(f"the {backuper.kind} backup method wrote nothing")
            await asyncio.to_thread(make_private, partial)
            digest, size = await asyncio.to_thread(checksum, partial)
            try:
                error = await backuper.verify(partial)
            except OSError as exc:
                error = f"cannot read the copy: {exc.strerror}"
            await asyncio.to_thread(fsync_tree, partial)
            await asyncio.to_thread(os.rename, partial, final)
            await asyncio.to_thread(fsync_dir, d)
        except OSError as exc:
            await asyncio.to_thread(remove, partial)
            if no_space(exc):
                free = await asyncio.to_thread(free_bytes, d)
                raise BackupFailed(f"backup directory full: no space left in {d} "
                                   f"({mib(free)} free)") from None
            what = exc.strerror or type(exc).__name__
            raise BackupFailed(f"{backuper.kind} backup into {d} failed: {what}") from None
        except BaseException:
            await asyncio.to_thread(remove, partial)
            raise
        duration = time.monotonic() - started
        versions = {**result.versions, "reason": reason}
        if incident is not None:
            versions["incident"] = incident
        backup_id = self.journal.backups.add(
            self.target, backuper.kind, str(final), size, digest, duration, versions,
            verified=error is None, verify_error=error)
        taken = self.get(backup_id)
        assert taken is not None
        self.failures.pop(backuper.kind, None)
        log.info("target=%s backup=%s id=%d reason=%s status=%s size=%d duration=%.2fs%s",
                 self.target, backuper.kind, backup_id, reason,
                 "verified" if error is None else "unverified", size, duration,
                 f" error={error!r}" if error else "")
        return taken

    # -- the catalog ------------------------------------------------------------------------

    def get(self, backup_id: int) -> StoredBackup | None:
        b = self.journal.backups.get(backup_id)
        return b if b is not None and b.target == self.target else None

    def catalog(self, kind: str) -> list[StoredBackup]:
        return self.journal.backups.of(self.target, kind)

    def newest_verified(self, kind: str) -> StoredBackup | None:
        good = [b for b in self.catalog(kind) if b.verified]
        return max(good, key=lambda b: b.created_at, default=None)

    def for_incident(self, kind: str, incident: int) -> list[StoredBackup]:
        return [b for b in self.catalog(kind) if b.incident == incident]

    async def checked(self, backup_id: int, kind: str) -> StoredBackup:
        """The backup, after its file was hashed again and still matches the catalog."""
        b = self.get(backup_id)
        if b is None or b.kind != kind:
            raise BackupRefused(f"no {kind} backup #{backup_id} of {self.target} in the catalog")
        if not b.verified:
            raise BackupRefused(f"backup #{backup_id} is not verified ({b.verify_error}); "
                                "refusing to restore it")
        try:
            digest, _ = await asyncio.to_thread(checksum, b.path)
        except OSError as exc:
            why = f"its file {b.path} cannot be read: {exc.strerror}"
            self.mark_unusable(b, why)
            raise BackupRefused(f"backup #{backup_id}: {why}; refusing to restore it") from None
        if digest != b.sha256:
            why = (f"checksum mismatch: {b.path.name} has sha256 {digest[:12]}, "
                   f"cataloged {b.sha256[:12]}; it changed since it was verified")
            self.mark_unusable(b, why)
            raise BackupRefused(f"backup #{backup_id}: {why}; refusing to restore it")
        return b

    def mark_unusable(self, b: StoredBackup, why: str) -> None:
        # Never chosen again: the next decision goes to an older backup that still holds.
        self.journal.backups.mark_unusable(b.id, why)
        log.error("target=%s backup=%s id=%d status=unusable reason=%r", self.target, b.kind,
                  b.id, why)

    # -- test restores -------------------------------------------------------------------------

    def last_restore_test(self, kind: str) -> datetime | None:
        """When a test restore of one of the kind's backups last passed, if ever."""
        return max((b.restore_tested_at for b in self.catalog(kind)
                    if b.restore_tested_at is not None and b.restore_test_error is None),
                   default=None)

    def due_for_restore_test(self, kind: str, every: float,
                             now: datetime | None = None) -> StoredBackup | None:
        """The backup a scheduled test restore proves now: the newest verified one, unless a
        test restore passed within `every` (a failed one makes the next newest due at once)."""
        now = now or now_utc()
        last = self.last_restore_test(kind)
        if last is not None and now - last < timedelta(seconds=every):
            return None
        return self.newest_verified(kind)

    def record_restore_test(self, b: StoredBackup, error: str | None,
                            at: datetime | None = None) -> None:
        """Catalog a test restore's outcome: when, and why it failed (None: it passed). The
        caller marks a failed backup unusable (mark_unusable), so no restore picks it."""
        self.journal.backups.record_restore_test(b.id, error, at or now_utc())

    # -- retention ----------------------------------------------------------------------------

    async def enforce_retention(self, kind: str, now: datetime | None = None) -> list[int]:
        """Remove backups older than `keep`, only once a newer verified backup exists.

        Backups taken for an incident are evidence: they count against retention like any
        other, but only once their incident is closed (while it is open a person may need them).
        """
        async with self._lock:
            now = now or now_utc()
            newest = self.newest_verified(kind)
            await asyncio.to_thread(self._sweep_partials, kind)
            if newest is None:
                return []
            cutoff = now - timedelta(seconds=self.keep)
            doomed = [b for b in self.catalog(kind)
                      if b.created_at < cutoff and b.created_at < newest.created_at
                      and b.id != newest.id and not self._evidence_needed(b)]
            for b in doomed:
                # Catalog row first: a crash between leaves an orphan file, never a dangling row.
                self.journal.backups.forget(b.id)
                await asyncio.to_thread(remove, b.path)
                of = f" evidence_of=incident-{b.incident}" if b.incident is not None else ""
                log.info("target=%s backup=%s id=%d status=removed reason=older than %s%s",
                         self.target, kind, b.id, timedelta(seconds=self.keep), of)
            return [b.id for b in doomed]

    def _evidence_needed(self, b: StoredBackup) -> bool:
        """Evidence of an incident still open (or one the journal does not know: we cannot
        tell) stays whatever its age."""
        if b.incident is None:
            return False
        incident = self.journal.incidents.get(b.incident)
        return incident is None or incident.state in OPEN_STATES

    def _sweep_partials(self, kind: str) -> None:
        """Remove what a crash mid-backup left; only old ones, as another store object (a manual
        backup by rollbackctl) may be writing a fresh one right now."""
        d = self.directory(kind)
        if not d.is_dir():
            return
        for p in d.glob(".*.partial"):
            try:
                if time.time() - p.stat().st_mtime > PARTIAL_AGE:
                    remove(p)
            except FileNotFoundError:
                pass


def sweep_leftovers(root: Path) -> list[Path]:
    """At start-up, remove every .partial under root/<target>/<kind>/: with the state directory
    locked (one daemon per state directory) and no backup started yet, each is what a crash
    (kill -9, power loss) left mid-backup. Logged one by one, with its size."""
    removed = []
    for p in sorted(root.glob("*/*/.*.partial")):
        try:
            size = _size_of(p)
            remove(p)
        except OSError as exc:
            log.error("backup=leftover path=%s status=not-removed reason=%r", p, exc.strerror)
            continue
        log.warning("backup=leftover path=%s size=%d status=removed reason=interrupted by a "
                    "crash", p, size)
        removed.append(p)
    return removed


def _size_of(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

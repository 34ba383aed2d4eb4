"""The backup store: private files, checksums, verify before it counts, refusals, retention."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.daemon.backup.base import BackupFailed, BackupKind, BackupRefused, BackupResult
from rollbackd.daemon.backup.files import checksum
from rollbackd.daemon.backup.store import BackupStore, sweep_leftovers
from rollbackd.daemon.journal.store import Journal


class FakeBackuper:
    """A hand-written backup method: writes given bytes (or a folder), verifies as told."""

    suffix = ".bin"

    def __init__(self, kind: BackupKind = "database", data: bytes = b"payload",
                 problem: str | None = None, folder: bool = False, fail: str | None = None):
        self.kind: BackupKind = kind
        self.data = data
        self.problem = problem
        self.folder = folder
        self.fail = fail
        self.verified: list[Path] = []

    async def backup(self, dest: Path) -> BackupResult:
        if self.fail:
            dest.write_bytes(b"half")
            raise BackupFailed(self.fail)
        if self.folder:  # like pg_dump -Fd: one directory of files
            dest.mkdir()
            (dest / "toc.dat").write_bytes(self.data)
            (dest / "1234.dat").write_bytes(self.data * 2)
        else:
            dest.write_bytes(self.data)
        return BackupResult({"alembic_revision": "0002"})

    async def verify(self, path: Path) -> str | None:
        assert path.exists(), "verify sees the copy before it is cataloged"
        self.verified.append(path)
        return self.problem


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_backup_is_private_checksummed_verified_then_cataloged(
        store: BackupStore, journal: Journal) -> None:
    b = await store.take(FakeBackuper(data=b"x" * 1000))
    assert b.verified and b.verify_error is None
    assert b.path.parent == store.root / "grading" / "database"
    assert mode(b.path) == 0o600
    for d in (store.root, store.root / "grading", b.path.parent):
        assert mode(d) == 0o700
    assert (b.sha256, b.size) == checksum(b.path) and b.size == 1000
    assert b.duration > 0
    row = journal.backups.get(b.id)
    assert row is not None and row.verified
    assert row.versions == {"alembic_revision": "0002", "reason": "scheduled"}
    assert [e.id for e in journal.backups.entries("grading", "database") if e.verified] == [b.id]
    assert not list(b.path.parent.glob(".*partial"))


async def test_a_copy_that_fails_verification_is_cataloged_unverified(
        store: BackupStore, journal: Journal) -> None:
    b = await store.take(FakeBackuper(problem="integrity_check: page 3 is never used"),
                         reason="incident-4", incident=4)
    assert not b.verified and b.verify_error == "integrity_check: page 3 is never used"
    assert b.incident == 4 and b.path.exists()  # kept as evidence
    assert b.path.name.endswith("Z-evidence-incident-4.bin")  # and named so
    (entry,) = journal.backups.entries("grading", "database")
    assert not entry.verified
    assert store.newest_verified("database") is None


async def test_a_failed_backup_leaves_nothing(store: BackupStore, journal: Journal) -> None:
    with pytest.raises(BackupFailed, match="source is gone"):
        await store.take(FakeBackuper(fail="source is gone"))
    assert journal.backups.of("grading") == []
    assert list(store.directory("database").iterdir()) == []


async def test_a_folder_backup_is_checksummed_as_a_whole(store: BackupStore) -> None:
    b = await store.take(FakeBackuper(folder=True, data=b"abc"))
    assert b.path.is_dir() and mode(b.path) == 0o700
    assert all(mode(f) == 0o600 for f in b.path.iterdir())
    assert b.size == 9 and b.sha256 == checksum(b.path)[0]
    (b.path / "1234.dat").write_bytes(b"abcabd")
    with pytest.raises(BackupRefused, match="checksum mismatch"):
        await store.checked(b.id, "database")


async def test_a_changed_backup_is_refused_and_never_chosen_again(
        store: BackupStore, journal: Journal) -> None:
    good = await store.take(FakeBackuper(data=b"old"))
    b = await store.take(FakeBackuper(data=b"new"))
    assert (await store.checked(b.id, "database")).id == b.id
    with open(b.path, "r+b") as fh:  # one flipped byte, as bit rot would do
        fh.write(b"m")
    with pytest.raises(BackupRefused, match=r"checksum mismatch.*refusing to restore"):
        await store.checked(b.id, "database")
    assert store.newest_verified("database") == store.get(good.id)
    entries = {e.id: e.verified for e in journal.backups.entries("grading", "database")}
    assert entries == {good.id: True, b.id: False}
    os.unlink(good.path)
    with pytest.raises(BackupRefused, match="cannot be read"):
        await store.checked(good.id, "database")
    with pytest.raises(BackupRefused, match="no database backup #999"):
        await store.checked(999, "database")
    with pytest.raises(BackupRefused, match="no key backup"):
        await store.checked(b.id, "key")


def age(journal: Journal, backup_id: int, days: float) -> None:
    at = datetime.now(UTC) - timedelta(days=days)
    with journal.tx() as db:
        db.execute("UPDATE backups SET created_at = ? WHERE id = ?",
                   (at.isoformat(timespec="milliseconds"), backup_id))


async def test_retention_waits_for_a_newer_verified_backup(
        store: BackupStore, journal: Journal) -> None:
    old = await store.take(FakeBackuper(data=b"1"))
    older_bad = await store.take(FakeBackuper(data=b"2", problem="bad"))
    evidence = await store.take(FakeBackuper(data=b"3"), reason="incident-1", incident=1)
    for b, days in ((old, 9), (older_bad, 10), (evidence, 11)):
        age(journal, b.id, days)
    # The only verified backup is old: it stays, and so does everything older than it.
    assert await store.enforce_retention("database") == [older_bad.id]
    assert old.path.exists() and not older_bad.path.exists()
    # A failed (unverified) new backup does not count as newer.
    await store.take(FakeBackuper(data=b"4", problem="bad"))
    assert await store.enforce_retention("database") == []
    fresh = await store.take(FakeBackuper(data=b"5"))
    assert await store.enforce_retention("database") == [old.id]
    assert not old.path.exists() and evidence.path.exists() and fresh.path.exists()
    assert {r.id for r in journal.backups.of("grading")} >= {fresh.id, evidence.id}
    assert old.id not in {r.id for r in journal.backups.of("grading")}


async def test_retention_keep_is_configurable_and_per_kind(journal: Journal) -> None:
    store = BackupStore(journal, journal.path.parent / "backups", "grading", keep=3600)
    db_old = await store.take(FakeBackuper(data=b"1"))
    key_old = await store.take(FakeBackuper(kind="key", data=b"k"))
    age(journal, db_old.id, 0.1)  # 2.4 h: older than keep
    age(journal, key_old.id, 0.1)
    await store.take(FakeBackuper(data=b"2"))
    assert await store.enforce_retention("database") == [db_old.id]
    assert await store.enforce_retention("key") == []  # no newer verified key backup
    assert key_old.path.exists()


async def test_a_crash_mid_backup_leaves_a_partial_that_retention_sweeps(
        store: BackupStore) -> None:
    b = await store.take(FakeBackuper())
    stale = b.path.parent / ".20200101T000000.000Z-scheduled.bin.partial"
    fresh = b.path.parent / ".20990101T000000.000Z-manual.bin.partial"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written by another store object")
    os.utime(stale, (0, 0))
    await store.enforce_retention("database")
    assert not stale.exists() and fresh.exists()


async def test_evidence_counts_against_retention_once_its_incident_is_closed(
        store: BackupStore, journal: Journal) -> None:
    still_open = journal.incidents.open("grading", "data_corruption", "damaged", None, {})
    closed = journal.incidents.open("grading", "data_corruption", "damaged", None, {})
    journal.incidents.update(closed, state="transient")  # recovered by itself: closed
    kept = await store.take(FakeBackuper(data=b"1"), reason=f"incident-{still_open}",
                            incident=still_open)
    done = await store.take(FakeBackuper(data=b"2"), reason=f"incident-{closed}-snapshot",
                            incident=closed)
    young = await store.take(FakeBackuper(data=b"3"), reason=f"incident-{closed}",
                             incident=closed)
    for b, days in ((kept, 30), (done, 30), (young, 1)):
        age(journal, b.id, days)
    await store.take(FakeBackuper(data=b"4"))
    assert await store.enforce_retention("database") == [done.id]
    assert not done.path.exists() and kept.path.exists() and young.path.exists()
    assert "evidence-incident-" in done.path.name and "evidence-incident-" in young.path.name


def test_start_up_removes_every_partial_a_crash_left(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    (root / "grading" / "database").mkdir(parents=True)
    (root / "web" / "key").mkdir(parents=True)
    fresh = root / "grading" / "database" / ".20990101T000000.000Z-scheduled.db.partial"
    fresh.write_bytes(b"x" * 4096)  # however young: nothing else can be writing it now
    dump = root / "web" / "key" / ".20990101T000000.000Z-incident-3.dump.partial"
    dump.mkdir()  # like pg_dump -Fd: a directory
    (dump / "toc.dat").write_bytes(b"toc")
    done = root / "grading" / "database" / "20990101T000000.000Z-scheduled.db"
    done.write_bytes(b"a finished backup")
    assert sweep_leftovers(root) == [fresh, dump]
    assert not fresh.exists() and not dump.exists() and done.exists()
    assert sweep_leftovers(root) == []
    assert sweep_leftovers(tmp_path / "never-created") == []

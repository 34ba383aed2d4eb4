"""SQLite restore on the real sample app: from a damaged page back to a healthy, verified app."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.rollback.base import StepContext, StepFailed
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component, Plan, PlanKind
from tests.recovery.support import (
    add_grades,
    corrupt_table,
    count,
    ctx,
    db_path,
    integrity,
    login,
    plan_for,
    revision,
    sqlite_settings,
    wait_healthy,
)

pytestmark = pytest.mark.e2e


def executor(ws: Workspace, store: BackupStore, **kw: object) -> SqliteExecutor:
    ex = SqliteExecutor(sqlite_settings(ws, **kw))
    ex.attach(store)
    return ex


def restore_plan(ex: SqliteExecutor, backup_id: int) -> Plan:
    return plan_for(PlanKind.DATA_RECOVERY, IncidentClass.DATA_CORRUPTION,
                    Capability.DATABASE_RESTORE, ex.restore_steps,
                    {Component.DATABASE: str(backup_id)})


async def run(ex: SqliteExecutor, c: StepContext) -> list[str]:
    """What the runner does for this executor: checklist calls, then its steps in order."""
    details = [await ex.backup_current(c), await ex.verify_target(c)]
    for step in c.plan.steps:
        if step.component is Component.DATABASE:
            details.append(await ex.run_step(step.name, c))
    return details


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_restore_from_a_damaged_page_back_to_health(app: Workspace,
                                                          store: BackupStore) -> None:
    path = db_path(app)
    head = revision(path)
    ex = executor(app, store)
    add_grades(path, 20)
    good = await store.take(ex.backuper)
    assert good.verified and good.versions["tables"]["grades"]["rows"] == 20
    add_grades(path, 5, course="after the backup")
    assert await ex.writes_since(good.id) == 5
    corrupt_table(path, "users")
    add_grades(path, 1, course="in the wal")
    assert integrity(path) != "ok"
    # Another process still has the file open (a shell, a cron job): the app's clean stop then
    # leaves its -wal behind, which must go with the damaged file, not onto the restored one.
    with closing(sqlite3.connect(path)) as holder:
        holder.execute("SELECT count(*) FROM grades").fetchone()
        plan = restore_plan(ex, good.id)
        assert plan.destructive_steps == ["swap_database"]
        details = await run(ex, ctx(plan, incident_id=7))

    evidence, target, staged, swapped, checked, started = details
    assert "NOT verified" in evidence and "kept as evidence" in evidence
    assert f"backup #{good.id}" in target and "checksum holds" in target
    assert "integrity_check ok" in staged and f"revision {head}" in staged
    assert f"integrity_check ok; alembic_version {head}" == checked
    assert "app started" in started
    ms = float(re.search(r"in place in ([\d.]+) ms", swapped).group(1))  # type: ignore[union-attr]
    assert ms < 10, swapped
    # The damaged file and its -wal are kept beside it under one name, never overwritten.
    (kept,) = path.parent.glob("grading.db.corrupted.*[0-9Z]")
    assert kept.name in swapped and "with -wal, -shm" in swapped
    assert Path(f"{kept}-wal").exists() and count(kept, "grades") == 26
    assert integrity(kept) != "ok"
    assert not list(path.parent.glob(".grading.db.restore-*"))
    # The app is back on the restored data: healthy, login works, the backup's rows.
    assert wait_healthy(app)["alembic_revision"] == head
    assert login(app) == 200
    assert integrity(path) == "ok" and count(path, "grades") == 20
    # The damaged state was also backed up into the store for the incident.
    (mine,) = store.for_incident("database", 7)
    assert not mine.verified and mine.path.exists()


async def test_a_backup_whose_checksum_changed_is_refused(app: Workspace,
                                                         store: BackupStore) -> None:
    path = db_path(app)
    ex = executor(app, store)
    b = await store.take(ex.backuper)
    with open(b.path, "r+b") as fh:
        fh.seek(b.size - 10)
        fh.write(b"\x00bitrot\x00")
    before = sha(path)
    c = ctx(restore_plan(ex, b.id))
    with pytest.raises(StepFailed, match=r"checksum mismatch.*refusing to restore"):
        await ex.verify_target(c)
    with pytest.raises(StepFailed, match="not a verified database backup"):
        await ex.run_step("prepare_restore", c)
    assert sha(path) == before and login(app) == 200
    assert store.newest_verified("database") is None


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs",
                          str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path, leave: int) -> None:
    """Fill a file system until `leave` bytes are free."""
    st = shutil.disk_usage(directory)
    (directory / "filler").write_bytes(b"\0" * max(0, st.free - leave))


async def test_a_full_disk_refuses_the_restore_and_leaves_everything_as_it_was(
        workspace: Workspace, store: BackupStore, tmpfs: Path) -> None:
    ws = workspace
    live = tmpfs / "grading.db"  # the app's database lives on the small disk
    shutil.copyfile(db_path(ws), live)
    env = ws.env_file.read_text().replace(str(db_path(ws)), str(live))
    ws.env_file.write_text(env)
    ws.start()
    wait_healthy(ws)
    ex = executor(ws, store, path=live)
    add_grades(live, 200)
    b = await store.take(ex.backuper)
    fill(tmpfs, leave=b.size // 2)
    before = sha(live)
    c = ctx(restore_plan(ex, b.id))
    await ex.verify_target(c)
    with pytest.raises(StepFailed, match=r"not enough space .* the current database is untouched"):
        await ex.run_step("prepare_restore", c)
    assert sha(live) == before
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "grading.db"]
    assert login(ws) == 200
    with pytest.raises(StepFailed, match="staged copy .* is missing: prepare_restore must run"):
        await ex.run_step("swap_database", c)
    assert login(ws) == 200  # the app was never stopped


async def test_no_room_for_the_current_state_backup_stops_the_plan_before_any_change(
        app: Workspace, journal: object, tmpfs: Path) -> None:
    from rollbackd.daemon.journal.store import Journal

    assert isinstance(journal, Journal)
    full = BackupStore(journal, tmpfs / "backups", "grading")
    ex = executor(app, full)
    add_grades(db_path(app), 3000)
    fill(tmpfs, leave=4096)
    before = sha(db_path(app))
    with pytest.raises(StepFailed, match=r"cannot back up the current database: .*nothing was"):
        await ex.backup_current(ctx(restore_plan(ex, 1)))
    assert sha(db_path(app)) == before
    assert journal.backups.of("grading") == []
    assert not [p for p in (tmpfs / "backups").rglob("*") if p.is_file()]


def test_a_failed_swap_is_undone(tmp_path: Path) -> None:
    path = tmp_path / "grading.db"
    path.write_bytes(b"current")
    Path(f"{path}-wal").write_bytes(b"wal frames")
    ex = SqliteExecutor(sqlite_settings(Workspace(tmp_path, 1), path=path))
    with pytest.raises(FileNotFoundError):
        ex.swap(tmp_path / "no-such-staged-copy")
    assert path.read_bytes() == b"current" and Path(f"{path}-wal").read_bytes() == b"wal frames"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grading.db", "grading.db-wal"]


def test_a_kept_copy_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "grading.db"
    ex = SqliteExecutor(sqlite_settings(Workspace(tmp_path, 1), path=path))
    for n in range(3):
        path.write_bytes(f"state {n}".encode())
        staged = tmp_path / "staged"
        staged.write_bytes(b"restored")
        ex.swap(staged)
    kept = sorted(tmp_path.glob("grading.db.corrupted.*"))
    assert sorted(p.read_bytes() for p in kept) == [b"state 0", b"state 1", b"state 2"]

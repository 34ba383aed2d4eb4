"""sqlite_integrity on real SQLite files: corruption, schema, revision, row counts, WAL writers."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.probes.observation import Status, Symptom
from rollbackd.probes.sqlite_integrity import SqliteIntegrityProbe, SqliteIntegritySettings

USERS = 3000
SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL,
                    locked_until TEXT, failed_login_attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE grades (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, grade INTEGER NOT NULL);
CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0002');
"""
KNOWN = ["0001", "0002"]


def make_db(path: Path, wal: bool = False) -> Path:
    with closing(sqlite3.connect(path)) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO users (email, name) VALUES (?, ?)",
                       [(f"user{i}@example.org", f"User number {i} " + "x" * 40)
                        for i in range(USERS)])
        db.executemany("INSERT INTO grades (user_id, grade) VALUES (?, ?)",
                       [(i, i % 100) for i in range(200)])
        db.commit()
    return path


def execute(path: Path, *sql: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        for statement in sql:
            db.execute(statement)
        db.commit()


def corrupt_users_page(path: Path) -> int:
    """Overwrite the middle cell of a leaf page in users' b-tree; the file header stays intact.

    The cell's length and rowid varints become garbage, which integrity_check reports; the
    file still opens, so this is corruption inside the data, not a broken header.
    """
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    with closing(sqlite3.connect(path)) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'users'").fetchone()[0]
    assert data[(root - 1) * size] == 0x05, "users should be big enough for an interior root"
    leaves = [p for p in range(root + 1, len(data) // size + 1) if data[(p - 1) * size] == 0x0D]
    page = leaves[len(leaves) // 2]
    start = (page - 1) * size
    cells = int.from_bytes(data[start + 3:start + 5], "big")
    pointer = start + 8 + 2 * (cells // 2)  # leaf pages have an 8-byte header
    cell = start + int.from_bytes(data[pointer:pointer + 2], "big")
    data[cell:cell + 16] = b"\xa5" * 16
    path.write_bytes(data)
    return page


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "app.sqlite3")


def probe_for(path: Path, **kw: Any) -> SqliteIntegrityProbe:
    kw.setdefault("timeout", 2.0)
    return SqliteIntegrityProbe("db", SqliteIntegritySettings(path=path, **kw))


FULL = {"required_tables": ["users", "grades"], "alembic_revisions": KNOWN,
        "row_counts": {"users": 0.5, "grades": 0.5}}


async def test_healthy_database(db: Path) -> None:
    probe = probe_for(db, **FULL)
    obs = await probe.check()
    assert obs.status is Status.OK and obs.symptom is None, obs.detail
    assert (obs.probe, obs.kind, obs.version) == ("db", "sqlite_integrity", "0002")
    assert obs.metrics == {"rows.users": USERS, "rows.grades": 200, "integrity_full_check": 1.0}
    assert obs.detail == ("app.sqlite3: integrity_check ok, 3 tables, alembic revision 0002, "
                          f"rows.users={USERS}, rows.grades=200.")
    # Within full_check_every, only the quick check runs.
    obs = await probe.check()
    assert obs.ok and obs.metrics["integrity_full_check"] == 0.0
    assert "quick_check ok" in obs.detail


async def test_full_check_runs_again_when_due(db: Path) -> None:
    probe = probe_for(db, full_check_every="50ms")
    assert (await probe.check()).metrics["integrity_full_check"] == 1.0
    assert (await probe.check()).metrics["integrity_full_check"] == 0.0
    await asyncio.sleep(0.06)
    assert (await probe.check()).metrics["integrity_full_check"] == 1.0


async def test_version_is_reported_without_known_revisions(db: Path) -> None:
    obs = await probe_for(db).check()
    assert obs.ok and obs.version == "0002" and obs.metrics == {"integrity_full_check": 1.0}


async def test_corrupted_btree_page_then_restored(db: Path, tmp_path: Path) -> None:
    backup = shutil.copy(db, tmp_path / "backup.sqlite3")
    corrupt_users_page(db)
    probe = probe_for(db, **FULL)
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.INTEGRITY), obs.detail
    assert obs.detail.startswith("app.sqlite3: integrity_check found ")
    assert "\n" not in obs.detail and "***" not in obs.detail
    # A failed full check is not the last good one: the full check runs again.
    obs = await probe.check()
    assert obs.symptom is Symptom.INTEGRITY and obs.metrics["integrity_full_check"] == 1.0
    shutil.copy(backup, db)
    obs = await probe.check()
    assert obs.ok, obs.detail


async def test_quick_check_alone_sees_the_corruption(db: Path) -> None:
    probe = probe_for(db)
    assert (await probe.check()).ok  # the full check passed, so the next one is quick
    corrupt_users_page(db)
    obs = await probe.check()
    assert obs.metrics["integrity_full_check"] == 0.0
    assert obs.symptom is Symptom.INTEGRITY and "quick_check found" in obs.detail


@pytest.mark.parametrize("content", [
    pytest.param(b"this is not a database at all" * 200, id="garbage"),
    pytest.param(b"", id="empty-is-a-database-without-tables"),
])
async def test_file_that_is_not_a_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(content)
    obs = await probe_for(path, required_tables=["users"]).check()
    assert obs.status is Status.FAIL
    if content:
        assert obs.symptom is Symptom.INTEGRITY and "not a database" in obs.detail
    else:
        assert obs.symptom is Symptom.MISSING_TABLE


async def test_missing_file_fails_and_is_never_created(tmp_path: Path) -> None:
    path = tmp_path / "gone.sqlite3"
    obs = await probe_for(path).check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.INTEGRITY)
    assert obs.detail == f"database file missing: {path}."
    assert list(tmp_path.iterdir()) == []
    make_db(path)
    assert (await probe_for(path).check()).ok


async def test_dropped_table_then_recreated(db: Path) -> None:
    probe = probe_for(db, **FULL)
    assert (await probe.check()).ok
    execute(db, "DROP TABLE grades")
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.MISSING_TABLE)
    assert obs.detail == "app.sqlite3: 1 of 2 required tables are missing (grades)."
    execute(db, "CREATE TABLE grades (id INTEGER PRIMARY KEY, user_id INTEGER, grade INTEGER)",
            "INSERT INTO grades (user_id, grade) SELECT id, 50 FROM users LIMIT 200")
    assert (await probe.check()).ok


async def test_row_count_table_must_exist(db: Path) -> None:
    obs = await probe_for(db, row_counts={"sessions": 0.5}).check()
    assert obs.symptom is Symptom.MISSING_TABLE and "table sessions is missing" in obs.detail


async def test_unknown_revision_then_downgraded(db: Path) -> None:
    probe = probe_for(db, **FULL)
    execute(db, "UPDATE alembic_version SET version_num = 'f00dbad'")
    obs = await probe.check()
    assert (obs.status, obs.symptom, obs.version) == (Status.FAIL, Symptom.BAD_REVISION, "f00dbad")
    assert "revision 'f00dbad' is not one of the 2 known" in obs.detail
    execute(db, "UPDATE alembic_version SET version_num = '0001'")
    obs = await probe.check()
    assert obs.ok and obs.version == "0001"


async def test_empty_or_missing_alembic_table(db: Path) -> None:
    probe = probe_for(db, alembic_revisions=KNOWN)
    execute(db, "DELETE FROM alembic_version")
    obs = await probe.check()
    assert obs.symptom is Symptom.BAD_REVISION and "alembic_version is empty" in obs.detail
    execute(db, "DROP TABLE alembic_version")
    obs = await probe.check()
    assert obs.symptom is Symptom.BAD_REVISION and "no alembic_version table" in obs.detail
    # Without known revisions, a database that does not use Alembic is fine.
    assert (await probe_for(db).check()).ok


async def test_truncated_table_collapses_then_restored(db: Path, tmp_path: Path) -> None:
    backup = shutil.copy(db, tmp_path / "backup.sqlite3")
    probe = probe_for(db, **FULL)
    assert (await probe.check()).ok
    execute(db, "DELETE FROM users WHERE id > 30")
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.ROWS_COLLAPSED)
    assert obs.metrics["rows.users"] == 30
    assert obs.detail == (f"app.sqlite3: rows.users fell from {USERS} to 30 (99% drop, "
                          "limit 50%).")
    # The baseline is the last OK observation, so it stays failing until the rows come back.
    assert (await probe.check()).symptom is Symptom.ROWS_COLLAPSED
    shutil.copy(backup, db)
    obs = await probe.check()
    assert obs.ok and obs.metrics["rows.users"] == USERS


async def test_a_drop_within_the_limit_moves_the_baseline(db: Path) -> None:
    probe = probe_for(db, row_counts={"users": 0.5})
    assert (await probe.check()).ok
    execute(db, f"DELETE FROM users WHERE id > {USERS * 6 // 10}")  # -40%
    assert (await probe.check()).ok
    execute(db, f"DELETE FROM users WHERE id > {USERS * 4 // 10}")  # -33% of the new baseline
    assert (await probe.check()).ok
    execute(db, "DELETE FROM users WHERE id > 10")
    assert (await probe.check()).symptom is Symptom.ROWS_COLLAPSED


# --- living databases --------------------------------------------------------------------------


@pytest.fixture
def wal_db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    path = make_db(tmp_path / "live.sqlite3", wal=True)
    writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    writer.execute("PRAGMA busy_timeout = 0")  # a writer that would have to wait fails at once
    writer.execute("PRAGMA synchronous = NORMAL")  # WAL's usual setting: no fsync per commit
    yield path, writer
    writer.close()


async def test_the_probe_never_blocks_a_wal_writer(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    path, writer = wal_db
    probe = probe_for(path, full_check_every="1ms", **FULL)
    stop, commits, errors = threading.Event(), [], []

    def write() -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                writer.execute("INSERT INTO grades (user_id, grade) VALUES (?, 1)", (i,))
            except sqlite3.Error as exc:
                errors.append(exc)
            commits.append(time.monotonic() - started)
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    results = []
    try:  # full checks back to back for a while, the writer committing all along
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline or (len(commits) < 20
                                              and time.monotonic() < deadline + 5):
            results.append(await probe.check())
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert all(r.ok for r in results), [r.detail for r in results]
    assert len(results) >= 5 and len(commits) >= 20 and max(commits) < 0.5
    assert results[-1].metrics["rows.grades"] > 200  # committed WAL frames are seen


async def test_an_open_write_transaction_does_not_stop_the_probe(
    wal_db: tuple[Path, sqlite3.Connection]
) -> None:
    path, writer = wal_db
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM users")
    obs = await probe_for(path, **FULL).check()
    assert obs.ok and obs.metrics["rows.users"] == USERS  # the uncommitted delete is invisible
    writer.execute("ROLLBACK")
    # And the probe's read never held the writer up.
    writer.execute("INSERT INTO grades (user_id, grade) VALUES (1, 1)")


async def test_the_probe_holds_no_lock_on_a_rollback_journal_database(db: Path) -> None:
    probe = probe_for(db, **FULL)
    assert (await probe.check()).ok
    with closing(sqlite3.connect(db, timeout=0)) as writer:
        writer.execute("BEGIN EXCLUSIVE")  # fails at once if anyone still held a lock
        writer.execute("ROLLBACK")


async def test_a_cancelled_check_leaves_no_reader_behind(db: Path) -> None:
    probe = probe_for(db, **FULL)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(probe.check(), timeout=0.000001)
    await asyncio.sleep(0.2)  # the thread's pass ends (or is interrupted) promptly
    with closing(sqlite3.connect(db, timeout=1)) as writer:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("ROLLBACK")
    assert (await probe.check()).ok


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "words"), [
    pytest.param({"path": "app.db"}, "must be an absolute path", id="relative"),
    pytest.param({"path": "/x.db", "row_counts": {"users": 1.5}}, "less than or equal to 1",
                 id="fraction-above-1"),
    pytest.param({"path": "/x.db", "full_check_every": "0s"}, "greater than 0", id="zero-every"),
])
def test_bad_settings(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        SqliteIntegritySettings(**kw)

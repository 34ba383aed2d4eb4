"""SQLite backups: consistent copies while a writer writes, verified, with what they hold."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from rollbackd.daemon.backup.sqlite import SqliteBackuper, count_writes
from rollbackd.daemon.backup.store import BackupStore


def make_db(path: Path, mode: str) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode={mode}")
        db.executescript("""
            CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);
            INSERT INTO alembic_version VALUES ('0002');
            CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL,
                                   created_at TEXT NOT NULL DEFAULT (datetime('now')));
            CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER,
                                 created_at TEXT NOT NULL DEFAULT (datetime('now')));
        """)
        db.executemany("INSERT INTO accounts (balance) VALUES (?)", [(1000,)] * 50)
        db.commit()
    return path


class Writer(threading.Thread):
    """Moves money between accounts in transactions: any consistent copy sums to 50 000 and
    has one ledger pair per transfer. A torn copy would break one of the two."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.transfers = 0

    def run(self) -> None:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            while not self.stop.is_set():
                a, b = self.transfers % 50 + 1, (self.transfers * 7) % 50 + 1
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE accounts SET balance = balance - 3 WHERE id = ?", (a,))
                db.execute("INSERT INTO ledger (account, amount) VALUES (?, -3)", (a,))
                db.execute("UPDATE accounts SET balance = balance + 3 WHERE id = ?", (b,))
                db.execute("INSERT INTO ledger (account, amount) VALUES (?, 3)", (b,))
                db.execute("COMMIT")
                self.transfers += 1


@pytest.mark.parametrize("mode", ["wal", "delete"])
async def test_the_copy_is_consistent_while_a_writer_writes(
        tmp_path: Path, store: BackupStore, mode: str) -> None:
    path = make_db(tmp_path / "bank.db", mode)
    writer = Writer(path)
    writer.start()
    try:
        while writer.transfers < 200:
            time.sleep(0.01)
        backuper = SqliteBackuper(path, [])
        taken = [await store.take(backuper) for _ in range(5)]
        during = writer.transfers
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.transfers > during or mode == "delete"  # WAL: the writer never waited
    for b in taken:
        assert b.verified, b.verify_error
        with closing(sqlite3.connect(f"file:{b.path}?mode=ro&immutable=1", uri=True)) as db:
            total = db.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
            moves = db.execute("SELECT count(*), coalesce(sum(amount), 0) FROM ledger").fetchone()
        assert total == 50_000
        assert moves[0] % 2 == 0 and moves[1] == 0
        assert b.versions["alembic_revision"] == "0002"
        assert b.versions["tables"]["ledger"]["rows"] == moves[0]
        assert set(b.versions["tables"]) == {"accounts", "ledger"}
    assert not list(tmp_path.glob("backups/**/*-wal"))  # verification leaves no side files


async def test_a_corrupted_database_is_kept_raw_and_never_counts(
        tmp_path: Path, store: BackupStore) -> None:
    path = make_db(tmp_path / "bank.db", "delete")
    with open(path, "r+b") as fh:  # the header itself: the backup API cannot read it
        fh.write(b"this is not sqlite at all")
    b = await store.take(SqliteBackuper(path, []), reason="incident-9", incident=9)
    assert not b.verified and "raw file copy" in (b.verify_error or "")
    assert b.path.is_dir() and (b.path / "bank.db").read_bytes() == path.read_bytes()
    assert b.versions["raw_copy"] is True


async def test_a_damaged_page_fails_verification(tmp_path: Path, store: BackupStore) -> None:
    from tests.recovery.support import corrupt_table

    path = make_db(tmp_path / "bank.db", "wal")
    corrupt_table(path, "accounts")
    b = await store.take(SqliteBackuper(path, []))
    assert not b.verified and (b.verify_error or "").startswith(("integrity_check", "cannot read"))


async def test_writes_since_a_backup_are_counted(tmp_path: Path, store: BackupStore) -> None:
    path = make_db(tmp_path / "bank.db", "wal")
    b = await store.take(SqliteBackuper(path, ["accounts", "ledger"]))
    before = dict(b.versions["tables"])
    assert count_writes(path, before, "created_at", 1) == 0
    with closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT INTO ledger (account, amount) VALUES (1, ?)", [(i,) for i in range(7)])
        db.execute("DELETE FROM accounts WHERE id IN (1, 2)")
        db.commit()
    assert count_writes(path, before, "created_at", 1) == 9
    assert count_writes(tmp_path / "missing.db", before, "created_at", 1) is None


async def test_a_damaged_index_still_lets_writes_be_counted_a_damaged_table_does_not(
        tmp_path: Path, store: BackupStore) -> None:
    from tests.recovery.support import corrupt_table

    path = make_db(tmp_path / "bank.db", "wal")
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE INDEX ix_ledger_account ON ledger (account)")
        db.executemany("INSERT INTO ledger (account, amount) VALUES (1, ?)", [(i,) for i in range(5)])
        db.commit()
    b = await store.take(SqliteBackuper(path, ["ledger"]))
    with closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO ledger (account, amount) VALUES (2, 2)")
        db.commit()
    corrupt_table(path, "ix_ledger_account")
    assert count_writes(path, dict(b.versions["tables"]), "created_at", 1) == 1
    corrupt_table(path, "ledger")
    assert count_writes(path, dict(b.versions["tables"]), "created_at", 1) is None

"""PostgreSQL recovery against the real throwaway server: dump + pg_restore -j into a new
database and a rename swap, snapshot clones, what a restore would lose, and refusals."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

from rollbackd.daemon.backup.pg import missing_tables
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.config import parse_config
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.data_settings import PostgresDatabase
from rollbackd.daemon.rollback.postgres_restore import PostgresExecutor, restored_name
from rollbackd.daemon.rollback.registry import build_executors
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component, PlanKind
from tests.recovery.pg_support import admin, app_database, databases, rows
from tests.recovery.support import ctx, plan_for

REV = "a1b2c3"


@pytest.fixture
def appdb(postgresql_proc: PostgreSQLExecutor) -> Iterator[str]:
    with app_database(postgresql_proc, "app", REV, users=50, grades=2000) as name:
        yield name


def settings(proc: PostgreSQLExecutor, db: str, tmp: Path, **kw: Any) -> PostgresDatabase:
    dsn = tmp / "dsn"
    dsn.write_text(f"postgresql://{proc.user}@{proc.host}:{proc.port}/{db}\n")
    values: dict[str, Any] = {"kind": "postgres", "dsn_file": str(dsn),
                              "tables": ["users", "grades"], "jobs": 2}
    values.update(kw)
    return PostgresDatabase(**values)


def restore_plan(backup_id: int, ex: PostgresExecutor) -> Any:
    return plan_for(PlanKind.DATA_RECOVERY, IncidentClass.DATA_CORRUPTION,
                    Capability.DATABASE_RESTORE, ex.restore_steps,
                    {Component.DATABASE: str(backup_id)})


async def run_restore(ex: PostgresExecutor, backup_id: int) -> list[str]:
    c = ctx(restore_plan(backup_id, ex))
    out = [await ex.verify_target(c)]
    for step in ex.restore_steps:
        out.append(await ex.run_step(step.name, c))
    return out


def test_dropped_table_is_restored_from_the_dump_into_a_new_database_and_swapped(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    assert b.verified, b.verify_error
    assert b.path.name.endswith(".dump")
    assert b.versions["alembic_revision"] == REV
    assert b.versions["tables"]["grades"]["rows"] == 2000
    assert b.path.stat().st_mode & 0o777 == 0o600

    with admin(postgresql_proc, appdb) as c:  # the app writes, then a bad deploy drops a table
        c.execute("INSERT INTO users (email) SELECT 'late' || g FROM generate_series(1, 7) g")
        c.execute("DROP TABLE grades")
    assert asyncio.run(ex.writes_since(b.id)) == 7

    details = asyncio.run(run_restore(ex, b.id))
    assert "pg_restore -j 2" in details[1]
    assert "kept as" in details[2]
    assert rows(postgresql_proc, appdb, "grades") == 2000
    assert rows(postgresql_proc, appdb, "users") == 50
    kept = databases(postgresql_proc, f"{appdb}_corrupted_")
    assert len(kept) == 1
    assert rows(postgresql_proc, kept[0], "users") == 57  # the evidence, as it was
    with admin(postgresql_proc, kept[0]) as c:
        assert c.execute("SELECT to_regclass('grades')").fetchone() == (None,)
    assert databases(postgresql_proc, restored_name(appdb, b.id)) == []
    assert asyncio.run(ex.current_version()) == REV


def test_restore_uses_the_snapshot_database_when_it_exists(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path, snapshot=True))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    assert b.verified, b.verify_error
    snap = b.versions["snapshot_db"]
    assert databases(postgresql_proc, f"{appdb}_snap_") == [snap]
    with admin(postgresql_proc, appdb) as c:
        c.execute("DELETE FROM grades WHERE grade < 50")
    details = asyncio.run(run_restore(ex, b.id))
    assert f"snapshot database {snap}" in details[0]
    assert f"the snapshot {snap} renamed, no copy" in details[1]
    assert "row counts match" in details[3]  # counted again once in place
    assert rows(postgresql_proc, appdb, "grades") == 2000
    assert len(databases(postgresql_proc, f"{appdb}_corrupted_")) == 1
    # The snapshot was consumed; the same backup now restores from its dump.
    assert databases(postgresql_proc, f"{appdb}_snap_") == []
    with admin(postgresql_proc, appdb) as c:
        c.execute("DROP TABLE grades")
    details = asyncio.run(run_restore(ex, b.id))
    assert "pg_restore -j 2" in details[1]
    assert rows(postgresql_proc, appdb, "grades") == 2000


def test_snapshot_is_skipped_while_the_app_is_connected_and_the_dump_still_counts(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path, snapshot=True))
    with admin(postgresql_proc, appdb):
        b = asyncio.run(store.take(ex.backuper))
    assert b.verified
    assert "snapshot_db" not in b.versions


def test_app_sessions_are_terminated_by_the_swap(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path, dump_format="directory"))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    assert b.verified and b.path.is_dir()
    app = admin(postgresql_proc, appdb)
    try:
        app.execute("DELETE FROM users WHERE id > 40 AND id NOT IN (SELECT user_id FROM grades)")
        details = asyncio.run(run_restore(ex, b.id))
        assert details[2].startswith("1 session(s) terminated")
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    finally:
        app.close()


def test_changed_dump_is_refused_and_nothing_changes(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    with open(b.path, "r+b") as fh:
        fh.seek(b.size // 2)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(StepFailed, match="checksum mismatch"):
        asyncio.run(run_restore(ex, b.id))
    assert databases(postgresql_proc, f"{appdb}_") == []
    assert store.newest_verified("database") is None  # never chosen again


def test_no_backup_older_than_onset_means_no_restore_plan(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    from datetime import timedelta

    from rollbackd.policies.targets import BackupEntry, Facts, restore_backup

    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path))
    b = asyncio.run(store.take(ex.backuper))
    entry = BackupEntry(id=b.id, created_at=b.created_at, verified=True)
    assert restore_backup(Facts(backups=(entry,), onset=b.created_at - timedelta(minutes=1))) \
        is None
    assert restore_backup(Facts(backups=(entry,), onset=b.created_at + timedelta(minutes=1))) \
        is not None


def test_restore_of_a_dump_that_does_not_match_leaves_the_live_database(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    # The catalog claims more rows than the dump holds: the check of the restored db refuses.
    store.journal.db.execute("UPDATE backups SET versions = json_set(versions, "
                             "'$.tables.grades.rows', 1) WHERE id = ?", (b.id,))
    with pytest.raises(StepFailed, match="grades has 2000 rows, the backup held 1"):
        asyncio.run(run_restore(ex, b.id))
    assert databases(postgresql_proc, f"{appdb}_") == []
    assert rows(postgresql_proc, appdb, "grades") == 2000


def test_config_builds_the_executor_only_with_a_dsn(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("postgresql://app:s3cret@127.0.0.1:5/grading\n")
    probe = ('[targets.grading.probes.h]\nkind = "http_health"\n'
             'url = "http://127.0.0.1:1/health"\n')
    t = parse_config(probe + '[targets.grading.database]\nkind = "postgres"\n'
                     f'dsn_file = "{tmp_path / "dsn"}"\njobs = 4\nsnapshot = true\n'
                     ).targets["grading"]
    ex = build_executors(t)[Component.DATABASE]
    assert isinstance(ex, PostgresExecutor)
    assert ex.dbname == "grading"
    assert ex.capabilities()[Capability.DATABASE_RESTORE][1].destructive
    env = ex.pg.env()
    assert env["PGPASSWORD"] == "s3cret" and env["PGDATABASE"] == "grading"
    assert "s3cret" not in repr(t.database)


# -- restore_tablespace, and what a dump must hold to count as verified -------------------------

def database_tablespace(proc: PostgreSQLExecutor, db: str) -> str:
    with admin(proc) as c:
        row = c.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t "
                        "ON t.oid = d.dattablespace WHERE d.datname = %s", (db,)).fetchone()
        return str(row[0]) if row else ""


@pytest.fixture
def tablespace(postgresql_proc: PostgreSQLExecutor) -> Iterator[str]:
    """A tablespace in a directory of its own; its databases are dropped afterwards, then it."""
    base = Path(tempfile.mkdtemp(prefix="rollbackd-test-ts-"))  # the postgres user reaches it
    base.chmod(0o711)
    location = base / "ts"
    location.mkdir(mode=0o700)
    if os.geteuid() == 0:  # the cluster runs as postgres (tests/infra/fixtures.py)
        owner = pwd.getpwnam("postgres")
        os.chown(location, owner.pw_uid, owner.pw_gid)
    name = f"ts{uuid.uuid4().hex[:8]}"
    with admin(postgresql_proc) as c:
        c.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
            sql.Identifier(name), sql.Literal(str(location))))
    try:
        yield name
    finally:
        with admin(postgresql_proc) as c:
            for (db,) in c.execute(
                    "SELECT d.datname FROM pg_database d JOIN pg_tablespace t "
                    "ON t.oid = d.dattablespace WHERE t.spcname = %s", (name,)).fetchall():
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(str(db))))
            c.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))
        shutil.rmtree(base, ignore_errors=True)


def test_the_restore_is_staged_in_the_restore_tablespace(
        postgresql_proc: PostgreSQLExecutor, appdb: str, tablespace: str, store: BackupStore,
        tmp_path: Path) -> None:
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path,
                                   restore_tablespace=tablespace))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    with admin(postgresql_proc, appdb) as c:
        c.execute("DELETE FROM grades WHERE grade < 50")
    asyncio.run(run_restore(ex, b.id))
    assert rows(postgresql_proc, appdb, "grades") == 2000
    assert database_tablespace(postgresql_proc, appdb) == tablespace  # it stays there
    (kept,) = databases(postgresql_proc, f"{appdb}_corrupted_")
    assert database_tablespace(postgresql_proc, kept) == "pg_default"
    assert rows(postgresql_proc, kept, "grades") == 1000


def test_a_dump_that_lacks_a_table_it_is_for_is_kept_but_never_verified(
        postgresql_proc: PostgreSQLExecutor, appdb: str, store: BackupStore,
        tmp_path: Path) -> None:
    """The checklist's dump of a database that lost a table is evidence: were it verified, it
    would be the newest backup older than a later incident's onset, and restored then."""
    ex = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path))
    with admin(postgresql_proc, appdb) as c:
        c.execute("DROP TABLE grades")
    b = asyncio.run(store.take(ex.backuper, "incident-1", 1))
    assert not b.verified and b.path.exists() and b.incident == 1
    assert b.verify_error == ("pg_restore --list: the archive holds no table grades of the 2 "
                              "the backups are for")
    assert store.newest_verified("database") is None
    # With no tables named, the backups are for whatever tables there are.
    every = PostgresExecutor(settings(postgresql_proc, appdb, tmp_path, tables=[]))
    assert asyncio.run(store.take(every.backuper)).verified


def test_missing_tables_reads_the_archive_listing() -> None:
    toc = ["216; 1259 16392 TABLE public grades postgres",
           "215; 1259 16389 TABLE public my table postgres",
           "214; 1259 16386 TABLE app users_archive postgres",
           "3346; 0 16386 TABLE DATA public users postgres",
           "3349; 2606 16400 CONSTRAINT public users users_pkey postgres"]
    assert missing_tables(toc, ["grades", "my table", "users", "my"]) == ["users", "my"]
    assert missing_tables(toc, []) == []

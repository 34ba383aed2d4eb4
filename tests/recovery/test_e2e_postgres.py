"""Each PostgreSQL restore path on real parts: the sample app on its own database of the test
cluster, an SMTP server, a daemon process.

From a real fault (a dropped table, a migration that breaks login) back to verified health, the
damaged database kept as evidence and the journal's timeline complete; and the refusals: a
restore that fills its disk, a dump that changed since it was verified. Both leave the live
database exactly as it was and hand the incident to a person.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, wait_for
from tests.recovery.support import (
    BAD_REVISION,
    add_bad_migration,
    login,
    migrate_argv,
    pg_add_grades,
    pg_connect,
    pg_count,
    pg_databases,
    pg_revision,
    pg_tables,
    service_argv,
    use_postgres,
    wait_healthy,
)
from tests.recovery.test_e2e_recovery import (
    CHECKLIST,
    RESTORE,
    assert_timeline,
    catalog,
    incident,
    plain_text,
    ready,
    show,
    steps,
    toml_list,
)

pytestmark = pytest.mark.e2e

GOOD_REVISION = "0003"  # the sample app's head
AUTO_RESTORE = "auto_destructive = true\nrestore_loss_threshold = 100\n"


@dataclass
class PgApp:
    """The workspace's grading app on database `db` of the test cluster."""

    ws: Workspace
    db: str
    dsn: str
    dsn_file: Path

    def count(self, table: str, db: str | None = None) -> int:
        return pg_count(self.dsn, table, db)

    def tables(self, db: str | None = None) -> list[str]:
        return pg_tables(self.dsn, db)

    def databases(self, tag: str = "") -> list[str]:
        """Databases derived from the app's: <db>_restore_*, <db>_corrupted_*, ..."""
        return pg_databases(self.dsn, f"{self.db}_{tag}")

    def execute(self, statement: str) -> None:
        with pg_connect(self.dsn) as db:
            db.execute(statement.encode())


@pytest.fixture
def pg(workspace: Workspace, postgresql_proc: PostgreSQLExecutor, tmp_path: Path
       ) -> Iterator[PgApp]:
    """The sample app migrated, seeded and running on a fresh database; every database named
    after it (restored, kept, snapshots) is dropped afterwards."""
    ws = workspace
    name = f"grading_{uuid.uuid4().hex[:8]}"
    host, port = postgresql_proc.host, postgresql_proc.port
    dsn = f"postgresql://{postgresql_proc.user}@{host}:{port}/{name}"
    with pg_connect(dsn, "postgres") as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        use_postgres(ws, dsn)
        pg_add_grades(dsn, 40)
        dsn_file = tmp_path / "grading-dsn"
        dsn_file.write_text(dsn + "\n")
        dsn_file.chmod(0o600)
        ws.start()
        wait_healthy(ws)
        yield PgApp(ws, name, dsn, dsn_file)
    finally:
        ws.stop()
        with pg_connect(dsn, "postgres") as db:
            for d in [name, *pg_databases(dsn, f"{name}_")]:
                db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(d)))


def pg_config(app: PgApp, password_file: Path, policy: str = "", database: str = "") -> str:
    """The probes and data sections of the grading target on PostgreSQL."""
    ws = app.ws
    return f"""
[targets.grading.probes.integrity]
kind = "postgres_integrity"
dsn_file = "{app.dsn_file}"
interval = "500ms"
timeout = "3s"
failure_threshold = 1
required_tables = ["users", "grades"]

[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{password_file}"
interval = "500ms"
timeout = "5s"
failure_threshold = 3

[targets.grading.database]
kind = "postgres"
dsn_file = "{app.dsn_file}"
stop = {toml_list(service_argv(ws, "stop"))}
start = {toml_list(service_argv(ws, "start"))}
migrate = {toml_list(migrate_argv())}
cwd = "{ws.app_dir}"
env_file = "{ws.env_file}"
tables = ["users", "grades"]
command_timeout = "30s"
restore_timeout = "60s"
{database}
[targets.grading.backups]
interval = "1h"
keep = "7d"

[targets.grading.policy]
{policy}
"""


def config_text(app: PgApp, smtp: SmtpSink, tmp_path: Path, policy: str = "",
                database: str = "") -> str:
    secret = tmp_path / "probe-password"
    secret.write_text(DEMO_USER[1] + "\n")
    secret.chmod(0o600)
    return app.ws.config_toml(smtp.port, targets_extra=pg_config(app, secret, policy, database))


def start(app: PgApp, smtp: SmtpSink, start_daemon: Any, tmp_path: Path, policy: str = "",
          database: str = "") -> DaemonProcess:
    d: DaemonProcess = start_daemon(config_text(app, smtp, tmp_path, policy, database))
    return d


def drop_users(app: PgApp) -> None:
    """A bad deploy's script drops the users table (CASCADE: grades' foreign key goes too).

    users, not grades: each login (the login probe's, every 500 ms) updates the user's row, and
    PostgreSQL counts that as a write, so only writes to grades give an exact figure for what
    a restore loses; a table that is gone loses nothing more when the backup replaces it.
    """
    app.execute("DROP TABLE users CASCADE")


def incident_backups(d: DaemonProcess, incident_id: int) -> list[dict[str, Any]]:
    return [b for b in catalog(d, "database")
            if json.loads(b["versions"]).get("incident") == incident_id]


def events(report: dict[str, Any]) -> dict[str, str]:
    return {e["event"]: e["detail"] for e in report["timeline"]}


def test_check_config_accepts_the_postgres_target(
        pg: PgApp, smtp: SmtpSink, tmp_path: Path) -> None:
    config = tmp_path / "rollbackd.toml"
    config.write_text(config_text(pg, smtp, tmp_path, AUTO_RESTORE,
                                  'restore_tablespace = "pg_default"\n'))
    res = subprocess.run([sys.executable, "-m", "rollbackd.daemon.cli", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "ok (1 targets, 3 probes" in res.stdout


def test_a_dropped_table_is_restored_into_a_new_database_and_swapped_in(
        pg: PgApp, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = pg.ws
    d = start(pg, smtp, start_daemon, tmp_path, AUTO_RESTORE)
    ready(d, ws)
    (backup,) = [b for b in catalog(d, "database") if b["verified_at"]]
    versions = json.loads(backup["versions"])
    assert versions["tables"]["grades"]["rows"] == 40 and versions["tables"]["users"]["rows"] == 1
    assert versions["alembic_revision"] == GOOD_REVISION
    assert oct(os.stat(backup["path"]).st_mode & 0o777) == "0o600"
    pg_add_grades(pg.dsn, 3, course="after the backup")  # what the restore loses

    drop_users(pg)
    inc = wait_for(lambda: incident(d, "resolved"), 60, f"restore resolved\n{d.log_text()}")
    report = show(d, inc["id"])
    assert report["incident_class"] == "data_corruption"
    assert "users" in report["reason"] and "missing" in report["reason"]
    assert f"restoring backup #{backup['id']}" in report["reason"]
    assert "the restore would lose 3 writes" in report["reason"]
    assert steps(report) == [(n, "done") for n in [*CHECKLIST, *RESTORE, "verify"]]
    assert_timeline(report)
    assert report["evidence"]["database"]["rows"] == {"grades": 43}  # as the fault left it
    details = {s["name"]: s["detail"] for s in report["steps"]}
    assert "kept as evidence of the damaged state" in details["backup_current"]
    assert "pg_restore -j 2" in details["prepare_restore"]
    assert "the replaced database is kept as" in details["swap_database"]

    # The damaged database is kept as evidence, exactly as the fault left it.
    (kept,) = pg.databases("corrupted_")
    assert kept in details["swap_database"]
    assert pg.tables(kept) == ["alembic_version", "grades"]
    assert pg.count("grades", kept) == 43
    assert pg.databases("restore_") == []
    # The live database is the backup's, and the app works on it.
    assert pg.tables() == ["alembic_version", "grades", "users"]
    assert pg.count("grades") == 40 and pg.count("users") == 1
    assert pg_revision(pg.dsn) == GOOD_REVISION
    assert login(ws) == 200 and wait_healthy(ws)["alembic_revision"] == GOOD_REVISION
    # The damaged state was also dumped before anything changed; lacking a table the backup
    # is for, that dump is evidence, never a restore candidate.
    (evidence,) = incident_backups(d, inc["id"])
    assert evidence["verified_at"] is None and "users" in evidence["verify_error"]
    assert Path(evidence["path"]).exists()


def test_a_migration_that_breaks_login_returns_the_release_schema_and_code(
        pg: PgApp, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = pg.ws
    d = start(pg, smtp, start_daemon, tmp_path, "auto_destructive = true\n")
    ready(d, ws)
    assert pg_revision(pg.dsn) == GOOD_REVISION
    v1 = ws.head()
    # v2 ships a migration that renames the password column the app still reads.
    add_bad_migration(ws, GOOD_REVISION)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "v2: normalise the password column")
    v2 = ws.head()
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                   env={**os.environ, **ws.env()}, check=True, capture_output=True, timeout=60)
    ws.restart()

    inc = wait_for(lambda: incident(d, "resolved"), 60, f"release returned\n{d.log_text()}")
    report = show(d, inc["id"])
    # The restart onto v2 may be seen first (app_down) or the renamed column (auth_broken):
    # either way the release goes back whole, schema first.
    assert report["incident_class"] in ("auth_broken", "app_down"), report["reason"]
    assert f"schema downgraded {BAD_REVISION} -> {GOOD_REVISION} first" in report["reason"]
    assert steps(report) == [(n, "done") for n in [
        *CHECKLIST, "snapshot_database", "alembic_downgrade", "check_revision",
        "git_checkout", "install_dependencies", "restart_service", "verify"]]
    assert_timeline(report)
    assert pg_revision(pg.dsn) == GOOD_REVISION and login(ws) == 200
    assert ws.head() == v1
    ledger = {e["version"]: e for e in d.result("known-good", target="grading")}
    assert ledger[v2]["state"] == "bad"
    with pg_connect(pg.dsn) as db:
        columns = {str(r[0]) for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'")}
    assert "password_hash" in columns and "pw_hash" not in columns
    assert pg.count("grades") == 40 and pg.databases() == []  # a downgrade swaps nothing
    (snapshot,) = incident_backups(d, inc["id"])
    assert snapshot["verified_at"]
    assert json.loads(snapshot["versions"])["alembic_revision"] == BAD_REVISION


# -- refusals: nothing changes, a person takes over ---------------------------------------------

@dataclass
class SmallDisk:
    tablespace: str
    path: Path
    size: int
    """Bytes: an empty database and 2 MiB more."""


@pytest.fixture
def small_disk(pg: PgApp) -> Iterator[SmallDisk]:
    """A tablespace on a real, small tmpfs owned by the postgres user.

    Sized to hold a whole empty database (CREATE DATABASE ... TEMPLATE template0 writes its
    catalogs lazily, through shared buffers) so that only the restored rows can fill it.
    """
    owner = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="rollbackd-test-ts-"))  # the postgres user reaches it
    base.chmod(0o711)
    disk = base / "disk"
    disk.mkdir()
    with pg_connect(pg.dsn, "postgres") as db:
        row = db.execute("SELECT pg_database_size('template0')").fetchone()
    assert row is not None
    size = (int(row[0]) + 2 * 2**20) // 4096 * 4096 + 4096
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k,mode=0700,"
                          f"uid={owner.pw_uid},gid={owner.pw_gid}", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {res.stderr.strip()}")
    name = f"small_{uuid.uuid4().hex[:8]}"
    try:
        with pg_connect(pg.dsn, "postgres") as db:
            db.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                sql.Identifier(name), sql.Literal(str(disk))))
        yield SmallDisk(name, disk, size)
    finally:
        try:
            pg.ws.stop()  # its connections would hold a database that lives on the disk
            with pg_connect(pg.dsn, "postgres") as db:
                for left in in_tablespace(pg, name):
                    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(left)))
                db.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))
        finally:
            deadline = time.monotonic() + 10
            while subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:  # still busy: detach it, freed once let go
                    subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)
                    break
                time.sleep(0.2)
            if not os.path.ismount(disk):
                shutil.rmtree(base, ignore_errors=True)


def in_tablespace(app: PgApp, name: str) -> list[str]:
    with pg_connect(app.dsn, "postgres") as db:
        return sorted(str(r[0]) for r in db.execute(
            "SELECT datname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
            "WHERE t.spcname = %s", (name,)))


def test_a_restore_that_fills_its_disk_leaves_the_live_database_untouched(
        pg: PgApp, small_disk: SmallDisk, smtp: SmtpSink, start_daemon: Any,
        tmp_path: Path) -> None:
    ws = pg.ws
    pg_add_grades(pg.dsn, 200_000, course="bulk")
    with pg_connect(pg.dsn) as db:
        row = db.execute("SELECT pg_total_relation_size('grades')").fetchone()
    assert row is not None and int(row[0]) > 1.2 * small_disk.size  # the rows alone overflow it
    d = start(pg, smtp, start_daemon, tmp_path, AUTO_RESTORE,
              f'restore_tablespace = "{small_disk.tablespace}"\n')
    ready(d, ws)
    drop_users(pg)

    inc = wait_for(lambda: incident(d, "escalated"), 60, f"escalation\n{d.log_text()}")
    report = show(d, inc["id"])
    assert report["incident_class"] == "data_corruption"
    assert steps(report) == [*[(n, "done") for n in CHECKLIST], ("prepare_restore", "failed")]
    # PostgreSQL on a full tmpfs reports ENOSPC or a short write, with the same hint.
    failure = report["steps"][-1]["detail"]
    assert failure.startswith(f"not enough space in tablespace {small_disk.tablespace} to "
                              "restore backup #1: pg_restore into "), failure
    assert "Check free disk space" in failure and "COPY failed for table" in failure
    assert failure.endswith("the current database is untouched")
    timeline = events(report)
    order = [e for e in timeline if e in ("detected", "started", "rolled_back", "verified",
                                          "failed", "escalated")]
    assert order == ["detected", "started", "failed", "escalated"], order
    assert "not enough space in tablespace" in timeline["failed"]
    assert "a person must take over" in timeline["escalated"]
    mail = wait_for(lambda: next((m for _, m in smtp.messages
                                  if "ROLLBACK FAILED" in str(m["Subject"])), None), 15,
                    "the failure mail")
    assert "not enough space in tablespace" in plain_text(mail)

    # The restore database is gone from the full disk; the live one is exactly as it was.
    assert in_tablespace(pg, small_disk.tablespace) == []
    assert pg.databases() == []
    assert pg.tables() == ["alembic_version", "grades"]
    assert pg.count("grades") == 200_040
    wait_healthy(ws)  # never stopped: the swap did not run
    # The daemon lives on, holding the incident for a person.
    assert d.proc is not None and d.proc.poll() is None
    assert d.result("status")
    assert [i["id"] for i in d.result("incidents") if i["state"] == "escalated"] == [inc["id"]]


def test_a_dump_that_changed_since_it_was_verified_is_refused(
        pg: PgApp, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    d = start(pg, smtp, start_daemon, tmp_path, AUTO_RESTORE)
    ready(d, pg.ws)
    (backup,) = [b for b in catalog(d, "database") if b["verified_at"]]
    with open(backup["path"], "r+b") as fh:  # bit rot, or a hand that "fixed" the file
        fh.seek(backup["size"] // 2)
        fh.write(b"\x00garbage\x00")
    drop_users(pg)

    inc = wait_for(lambda: incident(d, "escalated"), 60, f"escalation\n{d.log_text()}")
    report = show(d, inc["id"])
    assert report["incident_class"] == "data_corruption"
    names = [n for n, _ in steps(report)]
    assert names == CHECKLIST and steps(report)[-1] == ("verify_target", "failed")
    assert "checksum mismatch" in report["steps"][-1]["detail"]
    assert "checksum mismatch" in events(report)["failed"]
    # Nothing was restored, swapped or dropped, and the backup is never chosen again.
    assert pg.databases() == []
    assert pg.tables() == ["alembic_version", "grades"] and pg.count("grades") == 40
    (row,) = [b for b in catalog(d, "database") if b["id"] == backup["id"]]
    assert row["verified_at"] is None and "checksum mismatch" in row["verify_error"]
    assert d.proc is not None and d.proc.poll() is None

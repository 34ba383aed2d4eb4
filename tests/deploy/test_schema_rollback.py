"""Schema-aware code rollback on the sample app with real Alembic migrations, a real git repo,
real app processes and a real daemon: a lossless rename is downgraded before the code goes
back; a drop with rows holds with the reason and the row count; an expand-only migration
sends the code back alone and says no downgrade was needed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.demo.workspace import BROKEN_PATCH, Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e

HEADER = '''"""{doc}

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

'''

RENAME = HEADER.format(doc="Rename users.password_hash to pw_hash.") + '''
def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("password_hash", new_column_name="pw_hash")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("pw_hash", new_column_name="password_hash")
'''

DROP = HEADER.format(doc="Drop users.national_id_encrypted.") + '''
def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("national_id_encrypted")


def downgrade() -> None:
    op.add_column("users", sa.Column("national_id_encrypted", sa.Text, nullable=True))
'''

DROP_TABLE = HEADER.format(doc="Drop the grades table.") + '''
def upgrade() -> None:
    op.drop_index("ix_grades_user_id", table_name="grades")
    op.drop_table("grades")


def downgrade() -> None:
    op.create_table("grades", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("user_id", sa.Integer, nullable=False),
                    sa.Column("course", sa.String(255), nullable=False),
                    sa.Column("grade", sa.String(16), nullable=False),
                    sa.Column("created_at", sa.DateTime, nullable=False))
'''

EXPAND = HEADER.format(doc="Add users.nickname and the notes table.") + '''
def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.String(40), nullable=True))
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.Text, nullable=False))


def downgrade() -> None:
    op.drop_table("notes")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("nickname")
'''


def config(ws: Workspace, smtp: SmtpSink) -> str:
    argv = json.dumps([sys.executable, "-m", "alembic", "downgrade", "{revision}"])
    text = ws.config_toml(smtp.port, targets_extra=f"""
[targets.grading.probes.integrity]
kind = "sqlite_integrity"
path = "{ws.db_path}"
interval = "500ms"
timeout = "2s"
failure_threshold = 1

[targets.grading.database]
kind = "sqlite"
path = "{ws.db_path}"
migrate = {argv}
cwd = "{ws.app_dir}"
env_file = "{ws.env_file}"
command_timeout = "30s"
""")
    # The downgrade step is destructive: allowed to run on its own here, as a policy may say.
    return text.replace("[policy]\n", "[policy]\nauto_destructive = true\n")


def revision(ws: Workspace) -> str:
    with closing(sqlite3.connect(ws.db_path)) as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def columns(ws: Workspace, table: str) -> list[str]:
    with closing(sqlite3.connect(ws.db_path)) as db:
        return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def deploy(ws: Workspace, migration: str) -> str:
    """v2: a new migration and code that will not start, committed, migrated, restarted (what a
    deploy script does)."""
    (ws.app_dir / "migrations" / "versions" / "0004_change.py").write_text(migration)
    app = ws.app_dir / "app.py"
    head, sep, rest = app.read_text().partition("from __future__ import annotations\n")
    app.write_text(head + sep + BROKEN_PATCH + rest)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "v2: migration 0004 and settings from grading_settings")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                   check=True, capture_output=True, env={**os.environ, **ws.env()})
    assert revision(ws) == "0004"
    ws.restart()
    return ws.head()


def mail_text(msg: Any) -> str:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    return str(part.get_payload(decode=True).decode())


def settled(d: DaemonProcess, state: str) -> dict[str, Any] | None:
    incidents = d.result("incidents")
    return incidents[0] if incidents and incidents[0]["state"] == state else None


def start(ws: Workspace, smtp: SmtpSink, start_daemon: Any) -> tuple[DaemonProcess, str]:
    ws.start()
    d = start_daemon(config(ws, smtp))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")
    with closing(d.db()) as db:
        rev = db.execute("SELECT alembic_revision FROM ledger WHERE version = ?",
                         (good,)).fetchone()[0]
    assert rev == "0003"  # the schema v1 earned known-good on
    return d, good


def body_steps(show: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["state"]) for s in show["steps"]]


def test_lossless_rename_is_downgraded_before_the_code_goes_back(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    d, good = start(ws, smtp, start_daemon)
    bad = deploy(ws, RENAME)
    assert "pw_hash" in columns(ws, "users")

    inc = wait_for(lambda: settled(d, "resolved"), 60, f"resolved\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert body_steps(show) == [(n, "done") for n in (
        "capture_evidence", "notify", "backup_current", "record_incident", "verify_target",
        "snapshot_database", "alembic_downgrade", "check_revision",
        "git_checkout", "install_dependencies", "restart_service", "verify")]
    assert "downgrading to 0003 first" in show["reason"]
    assert "alter_column users.password_hash -> pw_hash (renamed back, nothing lost)" \
        in show["reason"]
    assert (ws.head(), revision(ws)) == (good, "0003")
    assert "password_hash" in columns(ws, "users") and "pw_hash" not in columns(ws, "users")
    assert bad != good


def test_drop_with_rows_is_held_with_the_reason_and_the_row_count(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    with closing(sqlite3.connect(ws.db_path)) as db:  # three users whose national ids go
        db.executemany("INSERT INTO users (email, password_hash, national_id_encrypted)"
                       " VALUES (?, 'x', 'token')", [("a@example.org",), ("b@example.org",)])
        db.commit()
    d, good = start(ws, smtp, start_daemon)
    bad = deploy(ws, DROP)

    inc = wait_for(lambda: settled(d, "held"), 40, f"held\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    reason = show["reason"]
    assert "drop_column users.national_id_encrypted" in reason
    assert "its values in 3 row(s) dropped are lost" in reason
    assert "rows at stake: 3" in reason
    assert "holding for a person" in reason
    # Nothing ran: no plan, the code and the schema are as the deploy left them.
    assert show["steps"] == []
    assert (ws.head(), revision(ws)) == (bad, "0004")
    assert "national_id_encrypted" not in columns(ws, "users")
    wait_for(lambda: smtp.messages, 15, "the held mail")
    assert len(smtp.messages) == 1
    _, mail = smtp.messages[0]
    assert "held" in str(mail["Subject"])
    assert "rows at stake: 3" in mail_text(mail)
    assert good != bad


def test_expand_only_migration_sends_the_code_back_alone(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    d, good = start(ws, smtp, start_daemon)
    deploy(ws, EXPAND)

    inc = wait_for(lambda: settled(d, "resolved"), 60, f"resolved\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert body_steps(show) == [(n, "done") for n in (
        "capture_evidence", "notify", "backup_current", "record_incident", "verify_target",
        "git_checkout", "install_dependencies", "restart_service", "verify")]
    said = ("no downgrade needed: the migrations since 0003 only add (0004_change.py: "
            "add_column users.nickname (nullable); 0004_change.py: create_table notes); the "
            "old code runs on the new schema")
    assert said in show["reason"]
    report = Path(d.state_dir / "reports" / f"incident-{inc['id']}.md").read_text()
    assert "no downgrade needed" in report
    # The old code runs on the new schema, which stays: nothing was lost or undone.
    assert (ws.head(), revision(ws)) == (good, "0004")
    assert "nickname" in columns(ws, "users")


def test_dropped_table_rows_are_counted_in_the_newest_backup_that_has_it(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    ws.add_grades(7)
    d, good = start(ws, smtp, start_daemon)
    # The scheduler backs the database up at start: 7 grades in it.
    backup = wait_for(lambda: [b for b in d.result("backups", target="grading")
                               if b["kind"] == "database" and b["verified"]], 20, "a backup")[-1]
    bad = deploy(ws, DROP_TABLE)

    inc = wait_for(lambda: settled(d, "held"), 40, f"held\n{d.log_text()}")
    reason = d.result("show", id=inc["id"])["reason"]
    assert ("0004_change.py: drop_table grades; a downgrade brings back the structure only: its "
            f"7 row(s) dropped are lost (counted in backup #{backup['id']} of ") in reason
    assert "rows at stake: 7" in reason
    assert (ws.head(), revision(ws)) == (bad, "0004") and good != bad

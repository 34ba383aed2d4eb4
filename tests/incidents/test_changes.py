"""What changed between the known-good and the failing release, read from real git repositories
built here: commits, files, Alembic operations, requirements and env key names, never a value."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.config import parse_config
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.incidents.changes import Change, ChangeKind, Sources, between, suspects, upgrade_ops
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.report import build_report, render_markdown
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.settings import PolicySettings
from tests.escalation.conftest import config_text

SECRETS = ("hunter2-old", "hunter2-new", "gone-s3cret", "tok-n3w", "ghp_TOKEN123", "sql-s3cret")
"""Values in the repository that must appear nowhere in what is found."""

INIT = '''"""init"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("users", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("password_hash", sa.String()))
    op.create_table("grades", sa.Column("id", sa.Integer()))


def downgrade():
    op.drop_table("grades")
    op.drop_table("users")
'''

RENAME = '''"""rename the password column, drop grades"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"


def upgrade():
    op.alter_column("users", "password_hash", new_column_name="pw_hash")
    op.drop_table("grades")
    op.add_column("users", sa.Column("nickname", sa.String(), nullable=True))
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("legacy")
    op.execute("UPDATE users SET pw_hash = 'sql-s3cret'")


def downgrade():
    op.alter_column("users", "pw_hash", new_column_name="password_hash")
'''


@dataclass(frozen=True)
class Repo:
    path: Path
    good: str
    bad: str


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@localhost", "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def write(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write(path, {
        "app.py": "print('v1')\n",
        "requirements.txt": "flask==2.3.0\nrequests>=2.0  # http\nprivate @ "
                            "git+https://ghp_TOKEN123@example.invalid/p.git\n",
        ".env": "DB_PASSWORD=hunter2-old\nexport KEEP=same\nOLD_KEY='gone-s3cret'\n",
        "migrations/versions/0001_init.py": INIT,
    })
    git(path, "add", "-A")
    git(path, "commit", "-qm", "release 1")
    good = git(path, "rev-parse", "HEAD")
    write(path, {"app.py": "print('v2')\n", "migrations/versions/0002_rename.py": RENAME})
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Rename the password column")
    write(path, {
        "requirements.txt": "Flask==3.0.0\nSQLAlchemy==2.0.30\nprivate @ "
                            "git+https://ghp_TOKEN123@example.invalid/p.git\n",
        ".env": "DB_PASSWORD=hunter2-new\nexport KEEP=same\nNEW_TOKEN=tok-n3w\n",
    })
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Bump flask")
    return Repo(path, good, git(path, "rev-parse", "HEAD"))


def texts(found: list[Change], kind: ChangeKind) -> list[str]:
    return [c.text for c in found if c.kind is kind]


async def test_the_changes_between_two_commits_each_say_how_they_were_found(repo: Repo) -> None:
    found = await between(Sources(repo.path), repo.good, repo.bad)
    assert [t.split(" ", 1)[1] for t in texts(found, ChangeKind.COMMIT)] == [
        "Bump flask", "Rename the password column"]
    files = texts(found, ChangeKind.FILE)
    assert [f.split(" |")[0] for f in files[:-1]] == [
        ".env", "app.py", "migrations/versions/0002_rename.py", "requirements.txt"]
    assert files[-1].startswith("4 files changed")
    assert texts(found, ChangeKind.MIGRATION) == [
        "new migration 0002_rename.py: alter_column users.password_hash -> pw_hash",
        "new migration 0002_rename.py: drop_table grades",
        "new migration 0002_rename.py: add_column users.nickname (nullable)",
        "new migration 0002_rename.py: drop_column users.legacy",
        "new migration 0002_rename.py: execute (raw SQL, not shown)",
    ]
    assert texts(found, ChangeKind.REQUIREMENT) == [
        "flask 2.3.0 -> 3.0.0", "requests removed (was >=2.0)", "sqlalchemy added ==2.0.30"]
    assert texts(found, ChangeKind.ENV) == [
        "NEW_TOKEN added in .env", "OLD_KEY removed from .env", "DB_PASSWORD changed in .env"]
    hows = {c.kind: c.how_found for c in found}
    short = f"{repo.good[:12]}..{repo.bad[:12]}"
    assert hows[ChangeKind.COMMIT] == f"git log --oneline {short}"
    assert hows[ChangeKind.FILE] == f"git diff --stat {short}"
    assert hows[ChangeKind.MIGRATION] == (f"read with ast from migrations/versions/"
                                          f"0002_rename.py at {repo.bad[:12]}")
    assert hows[ChangeKind.REQUIREMENT] == "requirements.txt compared between the two commits"
    assert hows[ChangeKind.ENV] == ("keys of .env (an env file the commits changed) compared "
                                    "between the two commits; values not shown")
    shown = json.dumps([c.to_dict() for c in found])
    assert [s for s in SECRETS if s in shown] == []


async def test_a_removed_migration_is_read_from_the_known_good_commit(repo: Repo) -> None:
    # Rolling forward from the bad to the good release: 0002 is the one that goes away.
    found = await between(Sources(repo.path), repo.bad, repo.good)
    assert texts(found, ChangeKind.MIGRATION)[0] == (
        "removed migration 0002_rename.py: alter_column users.password_hash -> pw_hash")
    assert texts(found, ChangeKind.REQUIREMENT) == [
        "flask 3.0.0 -> 2.3.0", "requests added >=2.0", "sqlalchemy removed (was ==2.0.30)"]


async def test_env_files_named_in_the_settings_are_compared_or_said_to_be_outside(
        repo: Repo, tmp_path: Path) -> None:
    write(repo.path, {"conf/app.settings": "SECRET_KEY=hunter2-old\nPORT=1\n"})
    git(repo.path, "add", "-A")
    git(repo.path, "commit", "-qm", "settings")
    before = git(repo.path, "rev-parse", "HEAD")
    write(repo.path, {"conf/app.settings": "SECRET_KEY=hunter2-new\nPORT=1\n"})
    git(repo.path, "commit", "-qam", "new secret")
    outside = tmp_path / "srv.env"
    src = Sources(repo.path, env_files=(repo.path / "conf/app.settings", outside))
    found = await between(src, before, git(repo.path, "rev-parse", "HEAD"))
    assert [(c.kind, c.text) for c in found if c.kind in (ChangeKind.ENV, ChangeKind.NOTE)] == [
        (ChangeKind.NOTE, f"env file {outside} is outside the repository: its keys were not "
                          "compared"),
        (ChangeKind.ENV, "SECRET_KEY changed in conf/app.settings"),
    ]
    assert "hunter2" not in json.dumps([c.to_dict() for c in found])


def test_upgrade_ops_read_only_the_upgrade_and_batch_blocks() -> None:
    assert upgrade_ops(INIT) == ["create_table users", "create_table grades"]
    assert upgrade_ops("def downgrade():\n    op.drop_table('x')\n") == []
    assert upgrade_ops("def upgrade():\n    op.rename_table('a', 'b')\n"
                       "    op.alter_column('t', 'c', nullable=False)\n"
                       "    op.create_index(op.f('ix_t_c'), 't', ['c'])\n") == [
        "rename_table a -> b", "alter_column t.c not null", "create_index ?"]


def target_config(repo: Path) -> str:
    return config_text(9) + f"""
[targets.web.deployment]
kind = "git"
repo = "{repo}"
restart = ["true"]
"""


def ledger_with_good(journal: Journal, good: str) -> None:
    earlier = now_utc() - timedelta(days=2)
    journal.ledger.save("web", LedgerEntry(good, earlier, earlier, earlier + timedelta(hours=1)))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


async def test_suspects_compare_the_known_good_release_and_never_raise(
        repo: Repo, journal: Journal) -> None:
    cfg = parse_config(target_config(repo.path)).targets["web"]
    assert await suspects(cfg, [], repo.bad) == [
        {"kind": "note", "text": f"no known-good release before {repo.bad[:12]} to compare "
                                 "with", "how_found": "the known-good ledger"}]
    ledger_with_good(journal, repo.good)
    found = await suspects(cfg, journal.ledger.entries("web"), repo.bad)
    assert found[0] == {"kind": "release", "text": f"known-good {repo.good[:12]} -> failing "
                        f"{repo.bad[:12]}", "how_found": "the known-good ledger"}
    assert len(found) == 1 + 2 + 5 + 5 + 3 + 3
    bogus = await suspects(cfg, journal.ledger.entries("web"), "--output=/tmp/x")
    assert bogus == [{"kind": "note", "text": "could not be found: ValueError",
                      "how_found": "what changed"}]
    slow = await suspects(cfg, journal.ledger.entries("web"), repo.bad, timeout=0)
    assert slow == [{"kind": "note", "text": "the search took over 0s and was stopped",
                     "how_found": "what changed"}]


async def test_the_first_mail_and_the_report_of_an_incident_name_the_suspects(
        repo: Repo, journal: Journal, tmp_path: Path) -> None:
    cfg = parse_config(target_config(repo.path))
    ledger_with_good(journal, repo.good)
    m = TargetMonitor("web", cfg.targets["web"], PolicySettings(dry_run=True), journal,
                      Outbox(journal, cfg), Metrics(CollectorRegistry()), tmp_path / "reports")
    for _ in range(m.settings["health"].failure_threshold):  # nothing listens on port 9
        await m.confirm()
    await m.desk.evaluate()
    (inc_id,) = [i.id for i in journal.incidents.recent(10)]
    bodies = [b for (b,) in journal.db.execute("SELECT body FROM outbox")]
    assert len(bodies) == 1
    section = bodies[0].split("What changed (suspects):\n", 1)[1].splitlines()
    assert section[0].startswith("  [probe] health failed first, at ")
    assert section[1] == (f"  [release] known-good {repo.good[:12]} -> failing "
                          f"{repo.bad[:12]} (the known-good ledger)")
    assert (f"  [migration] new migration 0002_rename.py: alter_column users.password_hash -> "
            f"pw_hash (read with ast from migrations/versions/0002_rename.py at "
            f"{repo.bad[:12]})") in section
    assert "  [env] DB_PASSWORD changed in .env (keys of .env (an env file the commits " \
           "changed) compared between the two commits; values not shown)" in section
    # The plan's notify step (the mail when it runs) reads the same from the evidence.
    inc = journal.incidents.get(inc_id)
    plan = m.desk.stored_plan(inc_id)
    assert inc is not None and plan is not None
    acting = notices.acting("web", inc, plan, plan.step_names, False).body
    assert acting.split("What changed (suspects):\n", 1)[1].splitlines()[:len(section) - 1] \
        == section[:-1]
    report = render_markdown(build_report(journal, inc_id))
    suspects_md = report.split("## What changed (suspects)\n", 1)[1].split("\n\n", 1)[0]
    assert suspects_md.splitlines()[1:] == [f"-{line[1:]}" for line in section[1:]
                                            if line.startswith("  [")]
    everything = "".join(bodies) + report
    assert [s for s in SECRETS if s in everything] == []

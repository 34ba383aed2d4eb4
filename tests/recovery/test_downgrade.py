"""Alembic downgrade on the real sample app: a verified snapshot first, then the app's own argv."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Plan, PlanKind
from tests.recovery.support import (
    BAD_REVISION,
    add_bad_migration,
    corrupt_table,
    ctx,
    db_path,
    login,
    plan_for,
    revision,
    sqlite_settings,
    wait_healthy,
)

pytestmark = pytest.mark.e2e


def upgrade(ws: Workspace) -> None:
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                   env={**os.environ, **ws.env()}, check=True, capture_output=True)


def downgrade_plan(ex: SqliteExecutor, rev: str) -> Plan:
    return plan_for(PlanKind.DATABASE_ROLLBACK, IncidentClass.AUTH_BROKEN,
                    Capability.DATABASE_DOWNGRADE, ex.downgrade_steps, {"revision": rev})


def executor(ws: Workspace, store: BackupStore) -> SqliteExecutor:
    ex = SqliteExecutor(sqlite_settings(ws))
    ex.attach(store)
    return ex


async def test_a_migration_that_breaks_login_is_downgraded(app: Workspace,
                                                          store: BackupStore) -> None:
    good = add_bad_migration(app)
    upgrade(app)
    assert revision(db_path(app)) == BAD_REVISION
    assert login(app) == 500
    ex = executor(app, store)
    assert Capability.DATABASE_DOWNGRADE in ex.capabilities()
    plan = downgrade_plan(ex, good)
    assert plan.destructive_steps == ["alembic_downgrade"]
    c = ctx(plan, incident_id=3)

    backed_up = await ex.backup_current(c)
    assert "verified" in backed_up and f"revision {BAD_REVISION}" in backed_up
    assert f"downgrade to {good} with python" in await ex.verify_target(c)
    snapshot = await ex.run_step("snapshot_database", c)
    assert "was taken before any change" in snapshot
    assert "exit 0" in await ex.run_step("alembic_downgrade", c)
    assert await ex.run_step("check_revision", c) == f"alembic_version is {good}"

    assert revision(db_path(app)) == good
    assert login(app) == 200 and wait_healthy(app)["alembic_revision"] == good
    (snap,) = store.for_incident("database", 3)
    assert snap.verified and snap.versions["alembic_revision"] == BAD_REVISION


async def test_no_downgrade_without_a_verified_snapshot(app: Workspace,
                                                        store: BackupStore) -> None:
    ex = executor(app, store)
    corrupt_table(db_path(app))
    before = db_path(app).read_bytes()
    c = ctx(downgrade_plan(ex, "0001"), incident_id=5)
    with pytest.raises(StepFailed, match="did not verify: refusing to downgrade"):
        await ex.run_step("snapshot_database", c)
    assert db_path(app).read_bytes() == before


@pytest.mark.parametrize(("rev", "error"), [
    ("--sql", "not an Alembic revision id"),
    ("nosuchrev", "(?s)exited 255: .*Can.t locate revision"),
])
async def test_a_bad_revision_is_refused_or_fails_loudly(app: Workspace, store: BackupStore,
                                                         rev: str, error: str) -> None:
    ex = executor(app, store)
    before = revision(db_path(app))
    with pytest.raises(StepFailed, match=error):
        await ex.run_step("alembic_downgrade", ctx(downgrade_plan(ex, rev)))
    assert revision(db_path(app)) == before
    with pytest.raises(StepFailed, match="after the downgrade, expected"):
        await ex.run_step("check_revision", ctx(downgrade_plan(ex, "0001")))

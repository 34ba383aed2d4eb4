"""decide() per incident class: which plan the tree builds from the facts, and the policy gates."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import KEY_DISASTER, Action, Decision, History, decide
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind, in_maintenance
from rollbackd.policies.plans import (
    CHECKLIST,
    Capability,
    Component,
    Plan,
    PlanKind,
    StepSpec,
    plan_from_dict,
    plan_to_dict,
)
from rollbackd.policies.settings import ClassPolicy, MaintenanceWindow, PolicySettings
from rollbackd.policies.targets import BackupEntry, Facts

C = IncidentClass
NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)  # a Wednesday
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
TARGET = "web"
EVIDENCE = "health 503 from /health"
CHECKLIST_NAMES = ["capture_evidence", "notify", "backup_current", "record_incident",
                   "verify_target"]


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


DAY = 86400
OLDER = "1111111111111111111111111111111111111111"
GOOD = "3f5e2c1a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f"
CURRENT = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"

DEPLOY = (StepSpec("git_checkout", idempotent=False, timeout=120),
          StepSpec("restart_service", idempotent=True, timeout=60))
TEST_FIRST = (StepSpec("start_beside", idempotent=True), StepSpec("probe_beside", idempotent=True),
              StepSpec("swap", idempotent=False))
DOWNGRADE = (StepSpec("alembic_downgrade", idempotent=False, timeout=300),)
RESTORE = (StepSpec("stop_app", idempotent=True),
           StepSpec("restore_database", idempotent=False, timeout=600, destructive=True),
           StepSpec("start_app", idempotent=True))
KEY = (StepSpec("restore_key", idempotent=True),)
FLUSH = (StepSpec("flush_sessions", idempotent=True, destructive=True),)
SESSIONS_BACK = (StepSpec("restore_sessions", idempotent=True, destructive=True),
                 StepSpec("check_sessions_restored", idempotent=True))
ALL_CAPS: dict[Capability, tuple[StepSpec, ...]] = {
    Capability.DEPLOYMENT_ROLLBACK: DEPLOY,
    Capability.DEPLOYMENT_TEST_FIRST: TEST_FIRST,
    Capability.DATABASE_DOWNGRADE: DOWNGRADE,
    Capability.DATABASE_RESTORE: RESTORE,
    Capability.KEY_RESTORE: KEY,
    Capability.SESSIONS_RESTORE: SESSIONS_BACK,
}
"""A target whose sessions executor does not flush after a restore (flush_after_restore off)."""


def caps(*without: Capability) -> dict[Capability, tuple[StepSpec, ...]]:
    return {c: s for c, s in ALL_CAPS.items() if c not in without}


LEDGER = (
    LedgerEntry(OLDER, ago(7 * DAY), ago(7 * DAY), ago(6 * DAY), alembic_revision="r1",
                key_fingerprint="k1"),
    # known-good since 02:15 the day before NOW, on schema r2 with key k1
    LedgerEntry(GOOD, ago(2 * DAY), ago(2 * DAY), datetime(2024, 4, 30, 2, 15, tzinfo=UTC),
                alembic_revision="r2", key_fingerprint="k1"),
    LedgerEntry(CURRENT, ago(3600)),  # deployed an hour ago, not known-good
)
ONSET = ago(600)
RIGHT_BACKUP = BackupEntry(3, ago(1200), verified=True, writes_since=0)
BACKUPS = (
    BackupEntry(1, ago(2 * DAY), verified=True, writes_since=900),
    RIGHT_BACKUP,  # the newest verified backup older than the onset
    BackupEntry(4, ago(300), verified=True),  # taken after the onset: already broken
    BackupEntry(7, ONSET, verified=True),  # taken at the onset: not older
    BackupEntry(5, ago(900), verified=False),
    BackupEntry(6, ago(800), verified=True, checksum_ok=False),
)
RIGHT_KEY = BackupEntry(20, ago(DAY), verified=True)
KEY_BACKUPS = (
    BackupEntry(19, ago(3 * DAY), verified=True),
    RIGHT_KEY,
    BackupEntry(21, ago(3600), verified=False),
    BackupEntry(22, ago(1800), verified=True, checksum_ok=False),
)
FACTS = Facts(
    current_version=CURRENT,
    current_revision="r2",
    current_key="k1",
    ledger=LEDGER,
    backups=BACKUPS,
    key_backups=KEY_BACKUPS,
    capabilities=ALL_CAPS,
    onset=ONSET,
)
DEFAULT = PolicySettings()


def facts(**kw: Any) -> Facts:
    return replace(FACTS, **kw)


def pol(**kw: Any) -> PolicySettings:
    return PolicySettings(**kw)


def run(cls: IncidentClass, f: Facts = FACTS, policy: PolicySettings = DEFAULT,
        history: History | None = None, now: datetime = NOW, evidence: str = EVIDENCE) -> Decision:
    d = decide(cls, evidence, f, history or History(), now, policy, TARGET)
    check_reason(d, cls, evidence)
    return d


def check_reason(d: Decision, cls: IncidentClass, evidence: str) -> None:
    assert d.incident_class is cls
    assert d.reason.startswith(f"{cls.value}: {evidence}; "), d.reason
    assert len(d.reason.splitlines()) == 1, d.reason


def body(plan: Plan | None) -> list[str]:
    """The plan's steps between the checklist and the verification."""
    assert plan is not None
    names = plan.step_names
    assert names[: len(CHECKLIST_NAMES)] == CHECKLIST_NAMES
    assert names[-1] == "verify"
    return names[len(CHECKLIST_NAMES):-1]


def names(steps: tuple[StepSpec, ...]) -> list[str]:
    return [s.name for s in steps]


# ---------------------------------------------------------------------------------------------
# app_down and perf_degraded: deployment rollback

def test_app_down_rolls_the_deployment_back() -> None:
    d = run(C.APP_DOWN)
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None
    assert d.plan.kind is PlanKind.DEPLOYMENT_ROLLBACK
    assert body(d.plan) == names(DEPLOY)  # test-first is for slow versions only
    assert dict(d.plan.targets) == {Component.DEPLOYMENT: GOOD}
    assert d.plan.current_version == CURRENT
    assert all(s.component is Component.DEPLOYMENT for s in d.plan.steps[5:-1])
    assert "rolling back to 3f5e2c1 (known-good since 02:15)" in d.reason


def test_perf_degraded_tests_the_target_first_when_it_can() -> None:
    d = run(C.PERF_DEGRADED)
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.DEPLOYMENT_ROLLBACK
    assert body(d.plan) == names(TEST_FIRST)
    assert all(s.component is Component.DEPLOYMENT for s in d.plan.steps[5:-1])
    assert d.plan.target_version == GOOD


def test_perf_degraded_without_test_first_rolls_back_plainly() -> None:
    d = run(C.PERF_DEGRADED, facts(capabilities=caps(Capability.DEPLOYMENT_TEST_FIRST)))
    assert d.action is Action.EXECUTE
    assert body(d.plan) == names(DEPLOY)


@pytest.mark.parametrize("cls", [C.APP_DOWN, C.PERF_DEGRADED])
@pytest.mark.parametrize(("f", "fragment"), [
    pytest.param(facts(capabilities=caps(Capability.DEPLOYMENT_ROLLBACK)),
                 "no deployment executor is configured", id="no-deployment-executor"),
    pytest.param(facts(ledger=(LedgerEntry(CURRENT, ago(3600)),)),
                 "no known-good version older than the current one", id="no-known-good"),
    pytest.param(facts(ledger=(replace(LEDGER[0], bad_at=ago(10)),
                               replace(LEDGER[1], bad_at=ago(10)), LEDGER[2])),
                 "no known-good", id="every-older-version-bad"),
])
def test_deployment_rollback_escalates_without_a_way(cls: IncidentClass, f: Facts,
                                                     fragment: str) -> None:
    d = run(cls, f)
    assert d.action is Action.ESCALATE
    assert d.plan is None
    assert fragment in d.reason


@pytest.mark.parametrize("cls", [C.APP_DOWN, C.PERF_DEGRADED])
def test_schema_changed_since_the_target_downgrades_first(cls: IncidentClass) -> None:
    d = run(cls, facts(current_revision="r3"))  # the bad deploy migrated r2 -> r3
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None
    deploy = TEST_FIRST if cls is C.PERF_DEGRADED else DEPLOY
    assert body(d.plan) == names(DOWNGRADE) + names(deploy)
    comps = [s.component for s in d.plan.steps[5:-1]]
    assert comps == [Component.DATABASE] + [Component.DEPLOYMENT] * len(deploy)
    assert d.plan.targets["revision"] == "r2"
    assert d.plan.target_version == GOOD
    assert d.plan.current["revision"] == "r3"
    assert "schema downgraded r3 -> r2 first" in d.reason


@pytest.mark.parametrize("cls", [C.APP_DOWN, C.PERF_DEGRADED])
def test_schema_changed_without_downgrade_escalates(cls: IncidentClass) -> None:
    d = run(cls, facts(current_revision="r3",
                       capabilities=caps(Capability.DATABASE_DOWNGRADE)))
    assert d.action is Action.ESCALATE
    assert d.plan is None
    assert "schema is at r3 but 3f5e2c1 ran on r2 and no downgrade is configured" in d.reason


@pytest.mark.parametrize("f", [
    pytest.param(facts(current_revision="r2"), id="same-revision"),
    pytest.param(facts(current_revision=None), id="current-revision-unknown"),
    pytest.param(facts(current_revision="r3", ledger=(
        LEDGER[0], replace(LEDGER[1], alembic_revision=None), LEDGER[2])),
        id="target-revision-unknown"),
])
def test_no_downgrade_without_a_known_schema_change(f: Facts) -> None:
    d = run(C.APP_DOWN, f)
    assert d.action is Action.EXECUTE
    assert body(d.plan) == names(DEPLOY)
    assert d.plan is not None and "revision" not in d.plan.targets
    assert "downgraded" not in d.reason


def test_a_version_that_ran_with_another_key_is_skipped() -> None:
    ledger = (LEDGER[0], replace(LEDGER[1], key_fingerprint="k0"), LEDGER[2])
    d = run(C.APP_DOWN, facts(ledger=ledger, current_revision="r1"))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.target_version == OLDER


def test_no_version_with_the_current_key_escalates() -> None:
    ledger = (replace(LEDGER[0], key_fingerprint="k0"), replace(LEDGER[1], key_fingerprint="k2"),
              LEDGER[2])
    d = run(C.APP_DOWN, facts(ledger=ledger))
    assert d.action is Action.ESCALATE
    assert d.plan is None and "no known-good" in d.reason


# ---------------------------------------------------------------------------------------------
# auth_broken: downgrade when a migration ran since, else restore, else escalate

def test_auth_broken_after_a_deploy_returns_schema_and_code_together() -> None:
    """A release is its code and its schema: the deploy of CURRENT migrated r2 -> r3; a
    downgrade alone would leave CURRENT's code, whose next upgrade breaks login again."""
    d = run(C.AUTH_BROKEN, facts(current_revision="r3"))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.DATABASE_ROLLBACK
    assert body(d.plan) == names(DOWNGRADE) + names(DEPLOY)  # schema first
    assert dict(d.plan.targets) == {"revision": "r2", Component.DEPLOYMENT: GOOD}
    assert d.plan.current_version == CURRENT  # the runner marks it bad once verified
    assert "returning the release, schema and code" in d.reason
    assert "schema downgraded r3 -> r2 first" in d.reason


def test_auth_broken_downgrades_alone_when_no_deploy_came_with_the_migration() -> None:
    # CURRENT is itself known-good: someone ran the migration by hand; its code stays.
    ledger = (*LEDGER[:2], replace(LEDGER[2], known_good_at=ago(1800), healthy_since=ago(3000),
                                   alembic_revision="r2"))
    d = run(C.AUTH_BROKEN, facts(ledger=ledger, current_revision="r3"))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and body(d.plan) == names(DOWNGRADE)
    assert dict(d.plan.targets) == {"revision": "r2"}
    assert d.plan.target_version == ""
    assert "downgrading the schema r3 -> r2" in d.reason


def test_auth_broken_downgrades_alone_without_a_deployment_executor() -> None:
    d = run(C.AUTH_BROKEN, facts(current_revision="r3",
                                 capabilities=caps(Capability.DEPLOYMENT_ROLLBACK,
                                                   Capability.DEPLOYMENT_TEST_FIRST)))
    assert d.plan is not None and body(d.plan) == names(DOWNGRADE)
    assert d.plan.target_version == ""


def test_auth_broken_downgrade_goes_to_the_newest_known_good_revision() -> None:
    ledger = (*LEDGER[:2], replace(LEDGER[2], known_good_at=ago(1800), healthy_since=ago(3000),
                                   alembic_revision="r3"))
    d = run(C.AUTH_BROKEN, facts(ledger=ledger, current_revision="r4"))
    assert d.plan is not None and d.plan.targets["revision"] == "r3"


def test_auth_broken_does_not_downgrade_past_a_newer_known_good_version() -> None:
    # GOOD, the newest known-good version, was promoted before any revision was recorded; the
    # schema is at r2. Nothing shows a migration ran since GOOD, yet the tree downgrades
    # r2 -> r1, the revision of OLDER, a week back: past the newest known-good state.
    ledger = (LEDGER[0], replace(LEDGER[1], alembic_revision=None), LEDGER[2])
    d = run(C.AUTH_BROKEN, facts(ledger=ledger, current_revision="r2"))
    assert d.plan is None or d.plan.targets.get("revision") != "r1", d.reason


def test_auth_broken_restores_without_a_migration() -> None:
    d = run(C.AUTH_BROKEN, facts(current_revision="r2"), pol(auto_destructive=True))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.DATABASE_ROLLBACK
    assert body(d.plan) == names(RESTORE)
    assert dict(d.plan.targets) == {Component.DATABASE: str(RIGHT_BACKUP.id)}
    assert "restoring backup #3 from 02:40" in d.reason


def test_auth_broken_restores_when_it_cannot_downgrade() -> None:
    d = run(C.AUTH_BROKEN, facts(current_revision="r3",
                                 capabilities=caps(Capability.DATABASE_DOWNGRADE)))
    assert d.plan is not None
    assert body(d.plan) == names(RESTORE)
    assert d.plan.targets[Component.DATABASE] == "3"


@pytest.mark.parametrize(("f", "expected"), [
    pytest.param(FACTS, 3, id="newest-verified-older-than-onset"),
    pytest.param(facts(backups=BACKUPS[2:]), None, id="only-newer-unverified-or-bad"),
    pytest.param(facts(backups=(BackupEntry(9, ago(700), verified=True),
                                BackupEntry(8, ago(650), verified=True, checksum_ok=False))),
                 9, id="checksum-failed-newer-skipped"),
    pytest.param(facts(backups=(BackupEntry(9, ago(700), verified=True),
                                BackupEntry(8, ago(601), verified=False))),
                 9, id="unverified-newer-skipped"),
    pytest.param(facts(backups=(BackupEntry(9, ONSET - timedelta(microseconds=1),
                                            verified=True),)),
                 9, id="just-before-onset"),
    pytest.param(facts(backups=(BackupEntry(9, ONSET, verified=True),)), None,
                 id="at-onset-is-not-older"),
    pytest.param(facts(onset=None), 4, id="no-onset-newest-verified"),
    pytest.param(facts(backups=()), None, id="no-backups"),
])
def test_auth_broken_restore_picks_the_right_backup(f: Facts, expected: int | None) -> None:
    d = run(C.AUTH_BROKEN, f)
    if expected is None:
        assert d.action is Action.ESCALATE
        assert d.plan is None
        assert ("no migration ran since the known-good version and no verified backup older "
                "than the onset can be restored") in d.reason
    else:
        assert d.plan is not None
        assert dict(d.plan.targets) == {Component.DATABASE: str(expected)}


def test_auth_broken_escalates_without_a_restore_executor() -> None:
    d = run(C.AUTH_BROKEN, facts(capabilities=caps(Capability.DATABASE_RESTORE)))
    assert d.action is Action.ESCALATE and d.plan is None


# ---------------------------------------------------------------------------------------------
# data_corruption: restore, then roll the deployment back if the current one is not known-good

def test_data_corruption_restores_then_rolls_back_a_new_deployment() -> None:
    d = run(C.DATA_CORRUPTION, policy=pol(auto_destructive=True))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.DATA_RECOVERY
    assert body(d.plan) == names(RESTORE) + names(DEPLOY)
    assert dict(d.plan.targets) == {Component.DATABASE: "3", Component.DEPLOYMENT: GOOD}
    assert "restoring backup #3" in d.reason and ", then rolling back to 3f5e2c1" in d.reason


def test_data_corruption_keeps_a_known_good_deployment() -> None:
    ledger = (*LEDGER[:2], replace(LEDGER[2], healthy_since=ago(3500), known_good_at=ago(2900)))
    d = run(C.DATA_CORRUPTION, facts(ledger=ledger), pol(auto_destructive=True))
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.DATA_RECOVERY
    assert body(d.plan) == names(RESTORE)
    assert dict(d.plan.targets) == {Component.DATABASE: "3"}
    assert "rolling back" not in d.reason


def test_a_backup_taken_for_an_incident_is_never_a_restore_target() -> None:
    # A verified snapshot taken by an earlier incident (say, at the bad revision before a
    # downgrade) is newer than the right backup, and still must not be chosen.
    evidence = BackupEntry(8, ago(1000), verified=True, incident=4)
    d = run(C.DATA_CORRUPTION, facts(backups=(*BACKUPS, evidence)), pol(auto_destructive=True))
    assert d.plan is not None and d.plan.targets[Component.DATABASE] == "3", d.reason


def test_a_restore_is_followed_by_a_session_flush_where_configured() -> None:
    with_flush = {**ALL_CAPS, Capability.SESSIONS_FLUSH: FLUSH}
    d = run(C.DATA_CORRUPTION, facts(capabilities=with_flush), pol(auto_destructive=True))
    assert d.action is Action.EXECUTE, d.reason
    assert body(d.plan) == names(RESTORE) + names(FLUSH) + names(DEPLOY)
    assert "restoring backup #3 from" in d.reason and ", then flushing the sessions" in d.reason
    d = run(C.AUTH_BROKEN, facts(capabilities=with_flush, ledger=LEDGER[:2]),
            pol(auto_destructive=True))
    assert body(d.plan)[-len(FLUSH):] == names(FLUSH), d.reason


SESSION_SNAPSHOTS = (
    BackupEntry(30, ago(2 * 3600), verified=True),
    BackupEntry(31, ago(1200), verified=True),  # the newest verified one older than the onset
    BackupEntry(32, ago(300), verified=True),  # taken after the loss
    BackupEntry(33, ago(900), verified=True, checksum_ok=False),
)


def test_lost_sessions_are_restored_from_the_snapshot_before_the_loss() -> None:
    f = facts(damaged=frozenset({Component.SESSIONS}), session_backups=SESSION_SNAPSHOTS,
              ledger=(*LEDGER[:2], replace(LEDGER[2], healthy_since=ago(3500),
                                           known_good_at=ago(2900))))
    d = run(C.DATA_CORRUPTION, f, pol(auto_destructive=True))
    assert d.action is Action.EXECUTE, d.reason
    assert body(d.plan) == names(SESSIONS_BACK)
    assert d.plan is not None and dict(d.plan.targets) == {Component.SESSIONS: "31"}
    assert "restoring the lost sessions and tokens from snapshot #31" in d.reason
    assert "logouts, come back" in d.reason
    # Reviving sessions someone may have revoked is a person's call unless policy allows.
    assert run(C.DATA_CORRUPTION, f).action is Action.AWAIT_APPROVAL
    # Both stores damaged: the database first, then the sessions.
    both = run(C.DATA_CORRUPTION, replace(f, damaged=frozenset(Component)),
               pol(auto_destructive=True))
    assert body(both.plan) == names(RESTORE) + names(SESSIONS_BACK)
    # ...unless the restore flushes the sessions anyway.
    flushing = replace(f, damaged=frozenset(Component),
                       capabilities={**ALL_CAPS, Capability.SESSIONS_FLUSH: FLUSH})
    assert body(run(C.DATA_CORRUPTION, flushing, pol(auto_destructive=True)).plan) == \
        names(RESTORE) + names(FLUSH)


@pytest.mark.parametrize("f", [
    pytest.param(facts(damaged=frozenset({Component.SESSIONS})), id="no-snapshot"),
    pytest.param(facts(damaged=frozenset({Component.SESSIONS}),
                       session_backups=SESSION_SNAPSHOTS[2:]), id="none-before-the-loss"),
    pytest.param(facts(damaged=frozenset({Component.SESSIONS}), session_backups=SESSION_SNAPSHOTS,
                       capabilities=caps(Capability.SESSIONS_RESTORE)), id="no-redis-executor"),
])
def test_lost_sessions_escalate_without_a_snapshot(f: Facts) -> None:
    d = run(C.DATA_CORRUPTION, f, pol(auto_destructive=True))
    assert d.action is Action.ESCALATE and d.plan is None
    assert "sessions were lost and no verified snapshot of them older than the onset" in d.reason


@pytest.mark.parametrize("f", [
    pytest.param(facts(backups=BACKUPS[2:]), id="no-usable-backup"),
    pytest.param(facts(capabilities=caps(Capability.DATABASE_RESTORE)), id="no-restore-executor"),
])
def test_data_corruption_escalates_without_a_restore(f: Facts) -> None:
    d = run(C.DATA_CORRUPTION, f)
    assert d.action is Action.ESCALATE
    assert d.plan is None
    assert "no verified backup older than the onset can be restored" in d.reason


def test_data_corruption_restore_needs_approval_by_default() -> None:
    d = run(C.DATA_CORRUPTION)
    assert d.action is Action.AWAIT_APPROVAL
    assert "approval" in d.reason and "restore_database" in d.reason


# ---------------------------------------------------------------------------------------------
# key_invalid: restore the key, or escalate: never clear data

def test_key_invalid_restores_the_newest_valid_key_backup() -> None:
    d = run(C.KEY_INVALID)
    assert d.action is Action.EXECUTE, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.KEY_RESTORE
    assert body(d.plan) == names(KEY)
    assert dict(d.plan.targets) == {Component.KEY: str(RIGHT_KEY.id)}
    assert d.plan.current[Component.KEY] == "k1"
    assert "restoring the key from backup #20" in d.reason


@pytest.mark.parametrize("key_backups", [
    pytest.param((), id="no-key-backup"),
    pytest.param(KEY_BACKUPS[2:], id="only-unverified-or-bad-checksum"),
])
def test_key_invalid_without_a_valid_backup_is_a_disaster(
    key_backups: tuple[BackupEntry, ...]
) -> None:
    d = run(C.KEY_INVALID, facts(key_backups=key_backups))
    assert d.action is Action.ESCALATE
    assert d.plan is None
    assert KEY_DISASTER in d.reason
    assert "never cleared" in KEY_DISASTER


CLEAR = (StepSpec("clear_encrypted", idempotent=True, destructive=True),)
NEW_KEY = (StepSpec("new_key", idempotent=False, destructive=True),
           StepSpec("restart_app", idempotent=False))


@pytest.mark.parametrize("policy", [DEFAULT, pol(auto_destructive=True)], ids=["default", "auto"])
def test_the_key_disaster_procedure_is_offered_only_for_approval(policy: PolicySettings) -> None:
    f = facts(key_backups=(), capabilities={**ALL_CAPS, Capability.KEY_REPLACE: NEW_KEY,
                                            Capability.DATABASE_CLEAR_ENCRYPTED: CLEAR})
    d = run(C.KEY_INVALID, f, policy)
    assert d.action is Action.AWAIT_APPROVAL, d.reason
    assert d.plan is not None and d.plan.kind is PlanKind.KEY_RESET
    assert body(d.plan) == names(CLEAR) + names(NEW_KEY)  # data first, then the fresh key
    assert KEY_DISASTER in d.reason and "needs an explicit approval" in d.reason
    # Without the columns to clear, a fresh key would leave rows nobody can read: escalate.
    d = run(C.KEY_INVALID, replace(f, capabilities={**ALL_CAPS,
                                                     Capability.KEY_REPLACE: NEW_KEY}), policy)
    assert d.action is Action.ESCALATE and d.plan is None and KEY_DISASTER in d.reason


def test_key_invalid_without_a_key_executor_escalates() -> None:
    d = run(C.KEY_INVALID, facts(capabilities=caps(Capability.KEY_RESTORE)))
    assert d.action is Action.ESCALATE and d.plan is None
    assert "no key executor is configured" in d.reason


# ---------------------------------------------------------------------------------------------
# dependency_down: always escalate; the deployment is not to blame

@pytest.mark.parametrize("policy", [
    pytest.param(DEFAULT, id="default"),
    pytest.param(pol(auto_destructive=True), id="auto-destructive"),
    pytest.param(pol(shadow=True), id="shadow"),
    pytest.param(pol(classes={"dependency_down": ClassPolicy(escalate_only=True)}),
                 id="escalate-only"),
])
def test_dependency_down_always_escalates(policy: PolicySettings) -> None:
    d = run(C.DEPENDENCY_DOWN, policy=policy)
    assert d.action is Action.ESCALATE
    assert d.plan is None
    assert "a dependency is down: not rolling back the deployment" in d.reason


# ---------------------------------------------------------------------------------------------
# gates

def test_disabled_class_is_ignored_before_anything_else() -> None:
    policy = pol(classes={"app_down": ClassPolicy(enabled=False, escalate_only=True)},
                 maintenance=[MaintenanceWindow(days=["wed"], start="02:00", duration=7200)])
    history = History(overrides=(Override(OverrideKind.PAUSE, None, ago(-60), "x"),),
                      transitions=tuple(ago(i) for i in range(10)))
    d = run(C.APP_DOWN, policy=policy, history=history)
    assert d.action is Action.IGNORE and d.plan is None
    assert "class disabled for this target" in d.reason
    # only that class
    assert run(C.PERF_DEGRADED, policy=pol(classes={"app_down": ClassPolicy(enabled=False)})
               ).action is Action.EXECUTE


@pytest.mark.parametrize("cls", [C.APP_DOWN, C.AUTH_BROKEN, C.DATA_CORRUPTION, C.KEY_INVALID,
                                 C.PERF_DEGRADED])
def test_escalate_only(cls: IncidentClass) -> None:
    d = run(cls, policy=pol(classes={cls.value: ClassPolicy(escalate_only=True,
                                                             plan="deployment_rollback")}))
    assert d.action is Action.ESCALATE and d.plan is None
    assert "escalate-only by policy" in d.reason


def test_plan_override_to_escalate() -> None:
    d = run(C.PERF_DEGRADED, policy=pol(classes={"perf_degraded": ClassPolicy(plan="escalate")}))
    assert d.action is Action.ESCALATE and d.plan is None
    assert "escalate-only by policy" in d.reason
    assert run(C.APP_DOWN, policy=pol(classes={"perf_degraded": ClassPolicy(plan="escalate")})
               ).action is Action.EXECUTE


def test_plan_override_replaces_the_default_plan() -> None:
    d = run(C.AUTH_BROKEN, policy=pol(classes={"auth_broken":
                                               ClassPolicy(plan="deployment_rollback")}))
    assert d.action is Action.EXECUTE
    assert d.plan is not None and d.plan.kind is PlanKind.DEPLOYMENT_ROLLBACK
    assert d.plan.incident_class is C.AUTH_BROKEN
    assert body(d.plan) == names(DEPLOY)


def _pause(target: str | None, until: datetime, kind: OverrideKind = OverrideKind.PAUSE,
           reason: str = "deploying by hand") -> History:
    return History(overrides=(Override(kind, target, until, reason, "uid 1000"),))


@pytest.mark.parametrize(("history", "suppressed"), [
    pytest.param(_pause(TARGET, ago(-3600)), True, id="pause-this-target"),
    pytest.param(_pause(None, ago(-3600)), True, id="pause-all-targets"),
    pytest.param(_pause("api", ago(-3600)), False, id="pause-other-target"),
    pytest.param(_pause(TARGET, NOW), False, id="pause-expired-now"),
    pytest.param(_pause(None, ago(1)), False, id="global-pause-expired"),
    pytest.param(_pause(TARGET, NOW + timedelta(microseconds=1)), True, id="pause-last-moment"),
    pytest.param(_pause(TARGET, ago(-3600), OverrideKind.MAINTENANCE), True,
                 id="maintenance-override"),
    pytest.param(_pause(None, ago(60), OverrideKind.MAINTENANCE), False,
                 id="maintenance-override-expired"),
    pytest.param(_pause(TARGET, ago(-3600), OverrideKind.SILENCE), False,
                 id="silence-does-not-suppress"),
])
def test_pause_and_maintenance_overrides(history: History, suppressed: bool) -> None:
    d = run(C.APP_DOWN, history=history)
    if suppressed:
        assert d.action is Action.SUPPRESS
        assert d.plan is None
        o = history.overrides[0]
        assert f"{o.kind} until {o.until:%H:%M} (deploying by hand): observing only" in d.reason
    else:
        assert d.action is Action.EXECUTE, d.reason


def test_suppress_names_the_longest_override() -> None:
    history = History(overrides=(
        Override(OverrideKind.PAUSE, TARGET, ago(-600), "short"),
        Override(OverrideKind.PAUSE, None, ago(-7200), "long"),
    ))
    d = run(C.APP_DOWN, history=history)
    assert d.action is Action.SUPPRESS
    assert "pause until 05:00 (long)" in d.reason


TUE_NIGHT = MaintenanceWindow(days=["tue"], start="23:30", duration=7200)
SUN_NIGHT = MaintenanceWindow(days=["sun"], start="22:00", duration=4 * 3600)


@pytest.mark.parametrize(("window", "now", "suppressed"), [
    pytest.param(TUE_NIGHT, datetime(2024, 4, 30, 23, 30, tzinfo=UTC), True, id="start"),
    pytest.param(TUE_NIGHT, datetime(2024, 4, 30, 23, 29, 59, tzinfo=UTC), False,
                 id="before-start"),
    pytest.param(TUE_NIGHT, datetime(2024, 5, 1, 0, 15, tzinfo=UTC), True,
                 id="after-midnight"),
    pytest.param(TUE_NIGHT, datetime(2024, 5, 1, 1, 30, tzinfo=UTC), False, id="end"),
    pytest.param(SUN_NIGHT, datetime(2024, 5, 6, 1, 59, tzinfo=UTC), True,
                 id="sunday-window-on-monday"),
    pytest.param(SUN_NIGHT, datetime(2024, 5, 6, 2, 0, tzinfo=UTC), False,
                 id="sunday-window-over"),
])
def test_maintenance_window(window: MaintenanceWindow, now: datetime, suppressed: bool) -> None:
    d = run(C.APP_DOWN, policy=pol(maintenance=[window]), now=now)
    if suppressed:
        assert d.action is Action.SUPPRESS and d.plan is None
        assert f"in the maintenance window {window.days[0]} {window.start}: observing only" \
            in d.reason
    else:
        assert d.action is Action.EXECUTE, d.reason


@pytest.mark.parametrize(("transitions", "held"), [
    pytest.param((), False, id="steady"),
    pytest.param(tuple(ago(i * 100) for i in range(3)), False, id="one-below-limit"),
    pytest.param(tuple(ago(i * 100) for i in range(4)), True, id="at-limit"),
    pytest.param(tuple(ago(i * 100) for i in range(8)), True, id="above-limit"),
    pytest.param((*(ago(i * 100) for i in range(3)), ago(600)), False,
                 id="one-exactly-a-window-ago-does-not-count"),
    pytest.param((*(ago(i * 100) for i in range(3)), ago(599)), True,
                 id="one-a-second-inside-the-window"),
])
def test_flapping_holds(transitions: tuple[datetime, ...], held: bool) -> None:
    d = run(C.APP_DOWN, policy=pol(flap_changes=4, flap_window=600),
            history=History(transitions=transitions))
    if held:
        assert d.action is Action.HOLD and d.plan is None
        n = sum(1 for t in transitions if NOW - t < timedelta(seconds=600))
        assert f"flapping: {n} state changes in 600s (limit 4): holding for a person" in d.reason
    else:
        assert d.action is Action.EXECUTE, d.reason


def test_pause_comes_before_flapping() -> None:
    history = replace(_pause(TARGET, ago(-60)), transitions=tuple(ago(i) for i in range(10)))
    assert run(C.APP_DOWN, history=history).action is Action.SUPPRESS


@pytest.mark.parametrize("cls", [C.AUTH_BROKEN, C.DATA_CORRUPTION])
def test_destructive_steps_wait_for_approval(cls: IncidentClass) -> None:
    d = run(cls)
    assert d.action is Action.AWAIT_APPROVAL
    assert d.plan is not None and d.plan.destructive_steps == ["restore_database"]
    assert "destructive (restore_database): waiting for approval" in d.reason


@pytest.mark.parametrize(("writes", "threshold", "action"), [
    pytest.param(0, 0, Action.EXECUTE, id="nothing-lost"),
    pytest.param(None, 0, Action.AWAIT_APPROVAL, id="loss-unknown-asks-a-person"),
    pytest.param(5, 0, Action.AWAIT_APPROVAL, id="loses-5-threshold-0"),
    pytest.param(5, 4, Action.AWAIT_APPROVAL, id="loses-5-threshold-4"),
    pytest.param(5, 5, Action.EXECUTE, id="loses-5-threshold-5"),
    pytest.param(5, 100, Action.EXECUTE, id="loses-5-threshold-100"),
])
def test_auto_destructive_and_the_loss_threshold(writes: int | None, threshold: int,
                                                 action: Action) -> None:
    backups = (replace(RIGHT_BACKUP, writes_since=writes),)
    d = run(C.AUTH_BROKEN, facts(backups=backups),
            pol(auto_destructive=True, restore_loss_threshold=threshold))
    assert d.action is action, d.reason
    if writes is not None:
        assert f"the restore would lose {writes} writes" in d.reason
    if action is Action.AWAIT_APPROVAL:
        assert "approval" in d.reason


def test_loss_is_named_when_approval_is_needed_anyway() -> None:
    backups = (replace(RIGHT_BACKUP, writes_since=42),)
    d = run(C.DATA_CORRUPTION, facts(backups=backups))
    assert d.action is Action.AWAIT_APPROVAL
    assert "the restore would lose 42 writes" in d.reason and "approval" in d.reason


@pytest.mark.parametrize("cls", [C.APP_DOWN, C.AUTH_BROKEN, C.DATA_CORRUPTION, C.KEY_INVALID,
                                 C.PERF_DEGRADED])
def test_shadow_only_says_what_it_would_do(cls: IncidentClass) -> None:
    d = run(cls, policy=pol(shadow=True, auto_destructive=True))
    assert d.action is Action.DRY_RUN
    assert d.plan is not None
    assert "shadow: would be " in d.reason and "at 03:00:00" in d.reason


def test_dry_run_says_dry_run() -> None:
    d = run(C.DATA_CORRUPTION, policy=pol(dry_run=True))
    assert d.action is Action.DRY_RUN
    assert "dry run: would be restoring backup #3" in d.reason


# ---------------------------------------------------------------------------------------------
# properties over everything decide can be given (biased so that most draws reach a plan)

def mostly(usual: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """`usual` four times in five, else one of `rare`."""
    return st.sampled_from([usual] * (4 * len(rare)) + list(rare))


VERSIONS = [f"{i:040x}" for i in range(1, 7)]
REVS = st.sampled_from([None, "r1", "r2", "r3"])
KEYS = st.sampled_from([None, "k1", "k1", "k1", "k2"])
STEP_POOL = [StepSpec(name, idempotent, timeout, destructive) for name in "abc"
             for idempotent in (True, False) for timeout in (30.0, 600.0)
             for destructive in (False, True)]
steps_st = st.lists(st.sampled_from(STEP_POOL), min_size=1, max_size=3).map(tuple)


@st.composite
def caps_st(draw: st.DrawFn) -> dict[Capability, tuple[StepSpec, ...]]:
    """Most executors present with their steps; some absent, some declaring no steps."""
    caps: dict[Capability, tuple[StepSpec, ...]] = {}
    for c in Capability:
        how = draw(mostly("steps", "absent", "empty"))
        if how != "absent":
            caps[c] = draw(steps_st) if how == "steps" else ()
    return caps


@st.composite
def facts_st(draw: st.DrawFn) -> Facts:
    entries = []
    for version in draw(st.lists(st.sampled_from(VERSIONS), unique=True,
                                 min_size=draw(mostly(2, 0)), max_size=5)):
        seen = draw(st.integers(2 * 3600, 30 * DAY))
        good = draw(mostly(True, False))
        entries.append(LedgerEntry(
            version, ago(seen), ago(seen) if good else None,
            ago(draw(st.integers(3600, seen))) if good else None,
            ago(draw(st.integers(0, seen))) if draw(mostly(False, True)) else None,
            alembic_revision=draw(REVS), key_fingerprint=draw(KEYS)))
    current = draw(mostly(CURRENT, None, VERSIONS[0]))
    if current == CURRENT:
        good = draw(mostly(False, True))
        entries.append(LedgerEntry(CURRENT, ago(3600), known_good_at=ago(600) if good else None,
                                   alembic_revision=draw(REVS), key_fingerprint=draw(KEYS)))
    backups_st = st.lists(
        st.builds(BackupEntry, id=st.integers(1, 50), created_at=st.integers(0, 9 * DAY).map(ago),
                  verified=mostly(True, False), checksum_ok=mostly(True, False),
                  alembic_revision=REVS, writes_since=st.one_of(st.none(), st.integers(0, 20))),
        min_size=draw(mostly(1, 0)), max_size=4, unique_by=lambda b: b.id,
    ).map(tuple)
    return Facts(
        current_version=current, current_revision=draw(REVS), current_key=draw(KEYS),
        ledger=tuple(entries), backups=draw(backups_st), key_backups=draw(backups_st),
        capabilities=draw(caps_st()),
        onset=draw(st.one_of(st.none(), st.integers(0, 3 * DAY).map(ago))),
    )


class_policy_st = st.builds(
    ClassPolicy, enabled=mostly(True, False), escalate_only=mostly(False, True),
    plan=mostly(None, "deployment_rollback", "database_rollback", "data_recovery",
                "key_restore", "escalate"))
window_st = st.builds(
    MaintenanceWindow, days=st.lists(st.sampled_from(["tue", "wed"]), min_size=1, max_size=2),
    start=st.sampled_from(["00:00", "02:30", "23:00"]),
    duration=st.integers(60, 4 * 3600).map(float))
policy_st = st.builds(
    PolicySettings,
    auto_rollback=mostly(True, False), dry_run=mostly(False, True), shadow=mostly(False, True),
    auto_destructive=st.booleans(), restore_loss_threshold=st.integers(0, 20),
    max_rollbacks=mostly(3, 0, 1), window=st.integers(1, 7200).map(float),
    cooldown=st.integers(1, 900).map(float), flap_changes=st.integers(2, 6),
    flap_window=st.integers(1, 3600).map(float),
    maintenance=st.one_of(st.just([]), st.lists(window_st, max_size=1)),
    classes=st.one_of(st.just({}), st.dictionaries(
        st.sampled_from([c.value for c in IncidentClass]), class_policy_st, max_size=3)),
)
override_st = st.builds(
    Override, kind=st.sampled_from(list(OverrideKind)),
    target=st.sampled_from([None, TARGET, "api"]), until=st.integers(-600, 600).map(ago),
    reason=st.text("abc xyz", max_size=8))
history_st = st.builds(
    History,
    rollbacks=st.one_of(st.just(()), st.lists(st.integers(0, 20_000).map(ago), max_size=4)
                        .map(tuple)),
    breaker=st.one_of(st.just(Breaker()), st.builds(
        Breaker, mode=st.sampled_from(list(BreakerMode)),
        opened_at=st.one_of(st.none(), st.integers(0, 5000).map(ago)))),
    transitions=st.one_of(st.lists(st.integers(0, 4000).map(ago), max_size=2).map(tuple),
                          st.lists(st.integers(0, 4000).map(ago), max_size=7).map(tuple)),
    overrides=st.one_of(st.just(()), st.lists(override_st, max_size=2).map(tuple)),
)
evidence_st = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)
classes_st = st.sampled_from(list(IncidentClass))


def _decide(cls: IncidentClass, f: Facts, h: History, p: PolicySettings,
            evidence: str = EVIDENCE) -> Decision:
    return decide(cls, evidence, f, h, NOW, p, TARGET)


@FAST
@given(cls=classes_st, f=facts_st(), h=history_st, p=policy_st, evidence=evidence_st)
def test_gates_reasons_and_what_each_action_carries(
    cls: IncidentClass, f: Facts, h: History, p: PolicySettings, evidence: str
) -> None:
    d = _decide(cls, f, h, p, evidence)
    check_reason(d, cls, evidence)
    # SUPPRESS / IGNORE / HOLD never carry anything to run
    if d.action in (Action.SUPPRESS, Action.IGNORE, Action.HOLD):
        assert d.plan is None
    if d.action in (Action.EXECUTE, Action.AWAIT_APPROVAL, Action.DRY_RUN):
        assert d.plan is not None
    if p.shadow or p.dry_run:
        assert d.action not in (Action.EXECUTE, Action.AWAIT_APPROVAL)
    if not p.auto_rollback:
        assert d.action is not Action.EXECUTE
    # each gate, in order
    cp = p.classes.get(cls.value)
    if cp is not None and not cp.enabled:
        assert d.action is Action.IGNORE
        return
    paused = any(o.kind in (OverrideKind.PAUSE, OverrideKind.MAINTENANCE)
                 and o.target in (None, TARGET) and NOW < o.until for o in h.overrides)
    suppressed = paused or in_maintenance(p.maintenance, NOW) is not None
    assert (d.action is Action.SUPPRESS) is suppressed
    if suppressed:
        return
    flaps = sum(1 for t in h.transitions if NOW - t < timedelta(seconds=p.flap_window))
    assert (d.action is Action.HOLD) is (flaps >= p.flap_changes)
    if d.action is not Action.HOLD and cp is not None and cp.escalate_only:
        assert d.action is Action.ESCALATE
        assert d.plan is None


@FAST
@given(cls=classes_st, f=facts_st(), h=history_st, p=policy_st)
def test_destructive_plans_never_execute_without_auto_destructive(
    cls: IncidentClass, f: Facts, h: History, p: PolicySettings
) -> None:
    d = _decide(cls, f, h, p)
    if d.plan is not None and d.plan.destructive_steps and not p.auto_destructive:
        assert d.action is not Action.EXECUTE
        if d.action is Action.AWAIT_APPROVAL:
            assert "approval" in d.reason
    # and with it, never a restore that loses more writes than the threshold
    if d.action is Action.EXECUTE and d.plan is not None:
        backup_id = d.plan.targets.get(Component.DATABASE)
        if backup_id is not None:
            b = next(b for b in f.backups if str(b.id) == backup_id)
            assert b.writes_since is None or b.writes_since <= p.restore_loss_threshold


@FAST
@given(cls=classes_st, f=facts_st(), h=history_st, p=policy_st)
def test_every_plan_has_checklist_then_verify_and_survives_a_round_trip(
    cls: IncidentClass, f: Facts, h: History, p: PolicySettings
) -> None:
    d = _decide(cls, f, h, p)
    if d.plan is None:
        return
    plan = d.plan
    assert plan.step_names[: len(CHECKLIST)] == CHECKLIST_NAMES
    assert plan.steps[: len(CHECKLIST)] == CHECKLIST
    assert plan.step_names[-1] == "verify"
    assert plan.steps[-1].component is Component.VERIFY
    assert plan.incident_class is cls
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan


@FAST
@given(cls=classes_st, f=facts_st(), h=history_st, p=policy_st)
def test_what_a_plan_rolls_back_to(
    cls: IncidentClass, f: Facts, h: History, p: PolicySettings
) -> None:
    d = _decide(cls, f, h, p)
    if d.plan is None:
        return
    plan = d.plan
    if Component.DEPLOYMENT in plan.targets:
        # a known-good version older than the current one, never one that ran with another key
        target = next(e for e in f.ledger if e.version == plan.target_version)
        assert target.known_good
        assert target.version != f.current_version
        cur = next((e for e in f.ledger if e.version == f.current_version), None)
        assert cur is None or target.first_seen < cur.first_seen
        assert f.current_key is None or target.key_fingerprint in (None, f.current_key)
        rev = target.alembic_revision
        if rev and f.current_revision and rev != f.current_revision:
            # the schema goes back first, right before the deployment's steps
            assert plan.targets["revision"] == rev
            downgrade = names(f.capabilities[Capability.DATABASE_DOWNGRADE])
            deploy_at = next(i for i, s in enumerate(plan.steps)
                             if s.component is Component.DEPLOYMENT)
            before = plan.steps[deploy_at - len(downgrade):deploy_at]
            assert downgrade and [s.name for s in before] == downgrade
            assert all(s.component is Component.DATABASE for s in before)
            assert all(s.component is Component.DEPLOYMENT for s in plan.steps[deploy_at:-1])
        elif plan.kind is PlanKind.DEPLOYMENT_ROLLBACK:
            assert "revision" not in plan.targets
    if Component.DATABASE in plan.targets:
        # the newest verified backup older than the onset whose checksum holds
        chosen = next(b for b in f.backups if str(b.id) == plan.targets[Component.DATABASE])
        assert chosen.verified and chosen.checksum_ok
        assert f.onset is None or chosen.created_at < f.onset
        usable = [b for b in f.backups if b.verified and b.checksum_ok
                  and (f.onset is None or b.created_at < f.onset)]
        assert chosen.created_at == max(b.created_at for b in usable)
    if Component.KEY in plan.targets:
        chosen = next(b for b in f.key_backups if str(b.id) == plan.targets[Component.KEY])
        assert chosen.verified and chosen.checksum_ok


@FAST
@given(f=facts_st(), h=history_st, p=policy_st)
def test_dependency_down_never_builds_a_plan(f: Facts, h: History, p: PolicySettings) -> None:
    classes = {k: v for k, v in p.classes.items() if k != "dependency_down" or v.plan is None}
    d = _decide(C.DEPENDENCY_DOWN, f, h, p.model_copy(update={"classes": classes}))
    assert d.plan is None
    assert d.action in (Action.ESCALATE, Action.IGNORE, Action.SUPPRESS, Action.HOLD)


@FAST
@given(f=facts_st(), h=history_st, p=policy_st)
def test_key_invalid_never_acts_without_a_valid_key_backup(
    f: Facts, h: History, p: PolicySettings
) -> None:
    f = replace(f, key_backups=tuple(b for b in f.key_backups
                                     if not (b.verified and b.checksum_ok)))
    classes = {k: v for k, v in p.classes.items() if k != "key_invalid"}
    d = _decide(C.KEY_INVALID, f, h, p.model_copy(update={"classes": classes}))
    # Only the disaster procedure may be planned, and it never runs without a person.
    assert d.action is not Action.EXECUTE
    assert d.plan is None or d.plan.kind is PlanKind.KEY_RESET
    if d.action in (Action.ESCALATE, Action.AWAIT_APPROVAL):
        assert KEY_DISASTER in d.reason

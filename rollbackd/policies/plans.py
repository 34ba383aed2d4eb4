"""Plans: the checklist, each component's steps and the verification, as ordered steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rollbackd.policies.classify import IncidentClass


class Component(StrEnum):
    """Who runs a step: the runner itself (checklist, verify) or one of the target's executors."""

    CHECKLIST = "checklist"
    DEPLOYMENT = "deployment"
    DATABASE = "database"
    KEY = "key"
    SESSIONS = "sessions"
    ACCOUNTS = "accounts"  # the app's user accounts: the runbook's mass-breach lockdown
    VERIFY = "verify"


class Capability(StrEnum):
    """What an executor can do; each executor declares the steps of what it supports."""

    DEPLOYMENT_ROLLBACK = "deployment_rollback"
    DEPLOYMENT_TEST_FIRST = "deployment_test_first"  # start the target beside, probe, then swap
    DATABASE_RESTORE = "database_restore"
    DATABASE_DOWNGRADE = "database_downgrade"
    KEY_RESTORE = "key_restore"
    KEY_REPLACE = "key_replace"  # a fresh key: only when no backup of the old one is left
    DATABASE_CLEAR_ENCRYPTED = "database_clear_encrypted"  # what the lost key encrypted: NULL
    SESSIONS_FLUSH = "sessions_flush"  # after a database restore: sessions of discarded data go
    SESSIONS_RESTORE = "sessions_restore"  # lost sessions and tokens back from a snapshot
    ACCOUNTS_LOCKDOWN = "accounts_lockdown"  # lock all but the emergency account, drop sessions


COMPONENT_OF: dict[Capability, Component] = {
    Capability.DEPLOYMENT_ROLLBACK: Component.DEPLOYMENT,
    Capability.DEPLOYMENT_TEST_FIRST: Component.DEPLOYMENT,
    Capability.DATABASE_RESTORE: Component.DATABASE,
    Capability.DATABASE_DOWNGRADE: Component.DATABASE,
    Capability.KEY_RESTORE: Component.KEY,
    Capability.KEY_REPLACE: Component.KEY,
    Capability.DATABASE_CLEAR_ENCRYPTED: Component.DATABASE,
    Capability.SESSIONS_FLUSH: Component.SESSIONS,
    Capability.SESSIONS_RESTORE: Component.SESSIONS,
    Capability.ACCOUNTS_LOCKDOWN: Component.ACCOUNTS,
}


@dataclass(frozen=True)
class StepSpec:
    name: str
    idempotent: bool
    """Safe to run again after an interruption; otherwise an interrupted run waits for a person."""
    timeout: float = 60.0
    destructive: bool = False
    """Changes or discards data (restore, flush, lockout): needs approval unless policy allows."""
    component: Component = Component.CHECKLIST


# Capabilities: the steps each configured executor would run for each action it supports.
Capabilities = Mapping[Capability, tuple[StepSpec, ...]]

# The runbook's pre-rollback checklist, in order. Evidence and the backup come before any change.
CHECKLIST: tuple[StepSpec, ...] = (
    StepSpec("capture_evidence", idempotent=True, timeout=30),
    StepSpec("notify", idempotent=True, timeout=10),
    StepSpec("backup_current", idempotent=True, timeout=600),
    StepSpec("record_incident", idempotent=True, timeout=10),
    StepSpec("verify_target", idempotent=True, timeout=60),
)
VERIFICATION: tuple[StepSpec, ...] = (
    StepSpec("verify", idempotent=True, timeout=600, component=Component.VERIFY),
)


class PlanKind(StrEnum):
    DEPLOYMENT_ROLLBACK = "deployment_rollback"
    DATABASE_ROLLBACK = "database_rollback"  # downgrade if a migration ran since, else restore
    DATA_RECOVERY = "data_recovery"  # database restore, then deployment rollback
    KEY_RESTORE = "key_restore"
    KEY_RESET = "key_reset"  # the key disaster's manual procedure: never without approval
    LOCKDOWN = "lockdown"  # an operator's mass-breach request: always approved by a person
    ESCALATE = "escalate"  # never act; tell people


LOCKDOWN_CLASS = "lockdown"
"""The incident class of a lockdown request: an operator's, not the decision tree's."""


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    incident_class: IncidentClass | str
    """A decision-tree class, or LOCKDOWN_CLASS for an operator's lockdown request."""
    steps: tuple[StepSpec, ...]
    targets: Mapping[Component | str, str] = field(default_factory=dict)
    """What each component rolls back to: a commit, a backup id, an alembic revision."""
    current: Mapping[Component | str, str | None] = field(default_factory=dict)

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def target_version(self) -> str:
        return self.targets.get(Component.DEPLOYMENT, "")

    @property
    def current_version(self) -> str | None:
        return self.current.get(Component.DEPLOYMENT)

    @property
    def destructive_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.destructive]


def build_plan(
    kind: PlanKind,
    incident_class: IncidentClass,
    actions: list[tuple[Capability, tuple[StepSpec, ...]]],
    targets: Mapping[Component | str, str],
    current: Mapping[Component | str, str | None],
    verify_timeout: float,
) -> Plan:
    """Checklist, then each action's steps in the order given, then verification."""
    body = tuple(
        StepSpec(s.name, s.idempotent, s.timeout, s.destructive, COMPONENT_OF[action])
        for action, steps in actions
        for s in steps
    )
    verify = tuple(
        StepSpec(s.name, s.idempotent, verify_timeout + 5, component=s.component)
        for s in VERIFICATION
    )
    return Plan(kind, incident_class, CHECKLIST + body + verify, dict(targets), dict(current))


def lockdown_plan(capabilities: Capabilities) -> Plan | None:
    """The lockdown as one plan: evidence, then the accounts executor's steps, which end with
    their own check (the probes say nothing about a breach). None: no accounts configured."""
    steps = capabilities.get(Capability.ACCOUNTS_LOCKDOWN)
    if not steps:
        return None
    body = tuple(StepSpec(s.name, s.idempotent, s.timeout, s.destructive, Component.ACCOUNTS)
                 for s in steps)
    return Plan(PlanKind.LOCKDOWN, LOCKDOWN_CLASS, (CHECKLIST[0], *body))


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """A plan as JSON-able data: an incident waiting for approval keeps it across restarts."""
    return {
        "kind": plan.kind.value,
        "incident_class": str(plan.incident_class),
        "steps": [{"name": s.name, "idempotent": s.idempotent, "timeout": s.timeout,
                   "destructive": s.destructive, "component": s.component.value}
                  for s in plan.steps],
        "targets": {str(k): v for k, v in plan.targets.items()},
        "current": {str(k): v for k, v in plan.current.items()},
    }


def plan_from_dict(data: dict[str, Any]) -> Plan:
    def key(k: str) -> Component | str:
        return Component(k) if k in Component._value2member_map_ else k

    cls = data["incident_class"]
    return Plan(
        PlanKind(data["kind"]),
        IncidentClass(cls) if cls in IncidentClass._value2member_map_ else str(cls),
        tuple(StepSpec(s["name"], s["idempotent"], s["timeout"], s["destructive"],
                       Component(s["component"])) for s in data["steps"]),
        {key(k): v for k, v in data["targets"].items()},
        {key(k): v for k, v in data["current"].items()},
    )

"""A person's rollback: the plan the tree would build with no limit in the way, and the gate
(limits, cooldown, breaker, pause, approval) that a `--force` would have to override."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, Decision, History, decide
from rollbackd.policies.plans import Plan
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts

ASKED = "manual rollback requested"
DEPLOYMENT_CLASSES = (IncidentClass.APP_DOWN, IncidentClass.PERF_DEGRADED)


@dataclass(frozen=True)
class ManualPlan:
    plan: Plan | None
    why: str
    """The tree's own sentence for the plan (or for why there is none)."""
    gate: str | None
    """What stands in the way now; None: nothing, it may run."""


def manual_class(open_class: str | None, to: str | None) -> IncidentClass:
    """The class a manual rollback is planned as: the open incident's, else app_down; a named
    version is a deployment, so only classes whose plan is a deployment rollback fit then."""
    known = IncidentClass._value2member_map_
    cls = IncidentClass(open_class) if open_class and open_class in known \
        else IncidentClass.APP_DOWN
    return cls if to is None or cls in DEPLOYMENT_CLASSES else IncidentClass.APP_DOWN


def _why(decision: Decision) -> str:
    """The decision's own sentence without the class and evidence put in front of it."""
    why = decision.reason.removeprefix(f"{decision.incident_class}: {ASKED}; ")
    return why.removesuffix(": escalating")  # a person asked: nobody else is being told


def plan_manual(cls: IncidentClass, facts: Facts, history: History, now: datetime,
                policy: PolicySettings, target: str) -> ManualPlan:
    # A person asked: automatic-rollback switches, dry run, shadow and per-class overrides are
    # not theirs to obey. The plan is what the tree builds with no limit in the way...
    unlimited = policy.model_copy(update={
        "auto_rollback": True, "dry_run": False, "shadow": False, "classes": {},
        "maintenance": [], "auto_destructive": True, "restore_loss_threshold": 2**62,
        "max_rollbacks": 2**31})
    plain = decide(cls, ASKED, facts, History(), now, unlimited, target)
    if plain.plan is None:
        return ManualPlan(None, _why(plain), None)
    # ...and the gate is what the limits, cooldown, breaker, pause and approval say now.
    manual = policy.model_copy(update={"auto_rollback": True, "dry_run": False,
                                       "shadow": False, "classes": {}})
    gated = decide(cls, ASKED, facts, history, now, manual, target)
    return ManualPlan(plain.plan, _why(plain),
                      None if gated.action is Action.EXECUTE else _why(gated))

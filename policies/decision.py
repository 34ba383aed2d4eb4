"""The decision tree's second half: incident class + history + time -> a Decision with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from policies.breaker import Breaker, BreakerMode
from policies.breaker import current as breaker_now
from policies.classify import IncidentClass
from policies.ledger import LedgerEntry, rollback_target
from policies.plans import Plan, StepSpec, deployment_rollback
from policies.settings import PolicySettings


class Action(StrEnum):
    EXECUTE = "execute"  # run the plan now
    DRY_RUN = "dry_run"  # record the plan, run nothing
    ESCALATE = "escalate"  # tell people; act no more


@dataclass(frozen=True)
class History:
    """What the journal knows that bears on a decision for one target."""

    rollbacks: tuple[datetime, ...] = ()
    """Start times of earlier automatic rollbacks of this target."""
    breaker: Breaker = field(default_factory=Breaker)


@dataclass(frozen=True)
class Decision:
    action: Action
    incident_class: IncidentClass
    reason: str
    plan: Plan | None = None


def _fmt(ts: datetime) -> str:
    return ts.strftime("%H:%M")


def _short(version: str) -> str:
    return version[:7] if len(version) == 40 else version


def decide(
    incident_class: IncidentClass,
    evidence: str,
    current_version: str | None,
    ledger: list[LedgerEntry],
    history: History,
    now: datetime,
    policy: PolicySettings,
    backend_steps: tuple[StepSpec, ...],
) -> Decision:
    """Whether and how to remediate; every answer carries one sentence with its figures."""

    def escalate(why: str) -> Decision:
        return Decision(Action.ESCALATE, incident_class, f"{incident_class}: {evidence}; {why}")

    target = rollback_target(ledger, current_version)
    if target is None:
        return escalate("no known-good version older than the current one: not rolling back")
    breaker = breaker_now(history.breaker, now, policy.breaker_reset)
    if breaker.mode is BreakerMode.OPEN:
        return escalate("circuit breaker open after failed remediations: acting no more")
    if not policy.auto_rollback:
        return escalate("automatic rollback is off for this target")
    recent = [t for t in history.rollbacks if now - t < timedelta(seconds=policy.window)]
    if len(recent) >= policy.max_rollbacks:
        return escalate(
            f"{len(recent)} automatic rollbacks in the last {policy.window:g}s "
            f"(limit {policy.max_rollbacks}): not rolling back"
        )
    last = max(history.rollbacks, default=None)  # the cooldown may be longer than the window
    if last is not None and now - last < timedelta(seconds=policy.cooldown):
        return escalate(f"in cooldown after the rollback at {_fmt(last)}")
    plan = deployment_rollback(
        incident_class, current_version, target.version, backend_steps, policy.verify_timeout
    )
    since = _fmt(target.known_good_at) if target.known_good_at else "?"
    reason = (
        f"{incident_class}: {evidence}; rolling back to {_short(target.version)} "
        f"(known-good since {since})"
    )
    if breaker.mode is BreakerMode.HALF_OPEN:
        reason += "; breaker half-open: one attempt allowed"
    action = Action.DRY_RUN if policy.dry_run else Action.EXECUTE
    return Decision(action, incident_class, reason, plan)

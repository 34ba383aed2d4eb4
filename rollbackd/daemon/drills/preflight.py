"""Why a drill must not start now. A drill breaks its target only when the daemon would repair it.

Every check is one sentence. The gates are the decision tree's own (pause, maintenance,
breaker, automatic rollback off, dry run, limit, cooldown, flapping): a drill that would only be
escalated proves nothing and leaves the target broken, so it is refused before anything changes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from rollbackd.daemon.drills.scenarios import Scenario
from rollbackd.policies.breaker import BreakerMode
from rollbackd.policies.breaker import current as breaker_now
from rollbackd.policies.decision import DEFAULT_PLANS
from rollbackd.policies.overrides import OverrideKind, active, in_maintenance
from rollbackd.policies.plans import PlanKind

if TYPE_CHECKING:
    from rollbackd.daemon.monitor import TargetMonitor


def detectors(monitor: TargetMonitor, scenario: Scenario) -> list[str]:
    """The target's probes that can see the scenario's fault."""
    found = []
    for name, s in monitor.settings.items():
        if s.kind not in scenario.detectors:
            continue
        if scenario.slow_probe and getattr(s, "max_latency", None) is None \
                and getattr(s, "latency", None) is None:
            continue
        found.append(name)
    return found


def unfit(monitor: TargetMonitor, scenario: Scenario) -> str | None:
    """The target cannot run this scenario at all (configuration)."""
    if not detectors(monitor, scenario):
        kinds = ", ".join(sorted(scenario.detectors))
        extra = " with max_latency or a latency baseline" if scenario.slow_probe else ""
        return (f"{monitor.name} has no probe that would detect {scenario.name} (a {kinds} "
                f"probe{extra})")
    caps = monitor.capabilities()
    if not any(caps.get(c) for c in scenario.capabilities):
        return (f"{monitor.name} cannot repair {scenario.name}: it needs a {scenario.component} "
                f"executor able to {' or '.join(c.value for c in scenario.capabilities)} "
                f"([targets.{monitor.name}.{scenario.component}])")
    return None


def _plan_kind(monitor: TargetMonitor, scenario: Scenario) -> PlanKind | str:
    cls = scenario.incident_class
    policy = monitor.policy.classes.get(cls.value)
    if policy is not None and not policy.enabled:
        return f"{cls} is disabled for {monitor.name} by policy"
    if policy is not None and policy.escalate_only:
        return f"{cls} is escalate-only for {monitor.name} by policy"
    return PlanKind(policy.plan) if policy and policy.plan else DEFAULT_PLANS[cls]


def gate(monitor: TargetMonitor, scenario: Scenario, now: datetime) -> str | None:
    """What would stop the daemon from repairing the fault right now, or None."""
    p, history = monitor.policy, monitor.history()
    kind = _plan_kind(monitor, scenario)
    if not isinstance(kind, PlanKind):  # a StrEnum is a str too: test for the enum
        return kind
    if kind is PlanKind.ESCALATE:
        return f"the plan for {scenario.incident_class} is escalate-only"
    for okind in (OverrideKind.PAUSE, OverrideKind.MAINTENANCE):
        o = active(history.overrides, monitor.name, now, okind)
        if o is not None:
            return f"{monitor.name} is under {okind} until {o.until:%H:%M} ({o.reason})"
    window = in_maintenance(p.maintenance, now)
    if window is not None:
        return f"in the maintenance window {','.join(window.days)} {window.start}"
    if not p.auto_rollback:
        return "automatic rollback is off (policy.auto_rollback = false)"
    if p.dry_run or p.shadow:
        return "the policy is dry-run or shadow: nothing would be repaired"
    breaker = breaker_now(history.breakers.get(kind, history.breaker), now, p.breaker_reset)
    if breaker.mode is BreakerMode.OPEN:
        return (f"the circuit breaker for {kind} is open (`rollbackctl breaker reset "
                f"{monitor.name} {kind}` after finding why)")
    recent = [t for t in history.rollbacks if now - t < timedelta(seconds=p.window)]
    if len(recent) >= p.max_rollbacks:
        return (f"{len(recent)} automatic rollbacks in the last {p.window:g}s (limit "
                f"{p.max_rollbacks})")
    last = max(history.rollbacks, default=None)
    if last is not None and now - last < timedelta(seconds=p.cooldown):
        until = last + timedelta(seconds=p.cooldown)
        return f"in cooldown after the rollback at {last:%H:%M:%S} (until {until:%H:%M:%S} UTC)"
    flaps = [t for t in history.transitions if now - t < timedelta(seconds=p.flap_window)]
    if len(flaps) + 2 >= p.flap_changes:
        return (f"{len(flaps)} healthy/failing changes in the last {p.flap_window:g}s: a drill's "
                f"two more would count as flapping (limit {p.flap_changes})")
    return None  # a plan waiting for approval is approved by the drill or by a person


def not_ready(monitor: TargetMonitor) -> str | None:
    """The target is not in a state a drill can start from."""
    if monitor.busy:
        return f"{monitor.name} is running a plan"
    inc = monitor.journal.incidents.open_for(monitor.name)
    if inc is not None:
        return f"{monitor.name} has an open incident ({inc.id}, {inc.incident_class}, {inc.state})"
    unproven = [p for p, h in monitor.health.items() if not h.passing or h.failing]
    if unproven:
        return (f"{monitor.name} is not healthy now: {', '.join(sorted(unproven))} "
                "not passing (a drill starts from a healthy target)")
    return None


async def not_known_good(monitor: TargetMonitor) -> str | None:
    """The deployed version must be known-good: the state the daemon brings the target back to."""
    if monitor.executor is None:
        return None
    version = await monitor.current_version(0.0)
    if version is None:
        return f"the deployed version of {monitor.name} cannot be read"
    entry = next((e for e in monitor.journal.ledger.entries(monitor.name) if e.version == version), None)
    if entry is None or not entry.known_good:
        why = f"marked bad ({entry.bad_reason})" if entry and entry.bad_at else (
            f"not known-good yet (policy.stable_after = {monitor.policy.stable_after:g}s)")
        return f"the deployed version {version[:12]} is {why}"
    return None

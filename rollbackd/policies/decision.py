"""The decision tree's second half: class + facts + history + time -> a Decision with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.breaker import current as breaker_now
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind, active, in_maintenance
from rollbackd.policies.plans import Capability, Component, Plan, PlanKind, StepSpec, build_plan
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import (
    Facts,
    can,
    damaged,
    deployment_target,
    downgrade_revision,
    key_backup,
    restore_backup,
    sessions_backup,
)


class Action(StrEnum):
    EXECUTE = "execute"  # run the plan now
    AWAIT_APPROVAL = "await_approval"  # destructive: wait for `rollbackctl approve`
    DRY_RUN = "dry_run"  # dry run or shadow: record the plan, run nothing
    ESCALATE = "escalate"  # tell people; act no more
    HOLD = "hold"  # flapping: hold the target for a person
    SUPPRESS = "suppress"  # paused or in maintenance: observe only, open nothing
    IGNORE = "ignore"  # the class is disabled for this target


DEFAULT_PLANS: dict[IncidentClass, PlanKind] = {
    IncidentClass.DATA_CORRUPTION: PlanKind.DATA_RECOVERY,
    IncidentClass.DEPENDENCY_DOWN: PlanKind.ESCALATE,
    IncidentClass.APP_DOWN: PlanKind.DEPLOYMENT_ROLLBACK,
    IncidentClass.KEY_INVALID: PlanKind.KEY_RESTORE,
    IncidentClass.AUTH_BROKEN: PlanKind.DATABASE_ROLLBACK,
    IncidentClass.PERF_DEGRADED: PlanKind.DEPLOYMENT_ROLLBACK,
}

KEY_DISASTER = ("no valid backup of the encryption key: encrypted data cannot be recovered "
                "without the key; encrypted fields are never cleared automatically")


@dataclass(frozen=True)
class History:
    """What the journal knows that bears on a decision for one target."""

    rollbacks: tuple[datetime, ...] = ()
    """Start times of earlier automatic rollbacks of this target."""
    breaker: Breaker = field(default_factory=Breaker)
    """The breaker of a plan kind missing from `breakers`."""
    breakers: Mapping[str, Breaker] = field(default_factory=dict)
    transitions: tuple[datetime, ...] = ()
    """When the target changed between healthy and failing: flapping detection."""
    overrides: tuple[Override, ...] = ()


class Gate(StrEnum):
    """Which safety limit kept an automatic plan from running (people are told by it)."""

    BREAKER_OPEN = "breaker_open"
    RATE_LIMIT = "rate_limit"
    COOLDOWN = "cooldown"


@dataclass(frozen=True)
class Decision:
    action: Action
    incident_class: IncidentClass
    reason: str
    plan: Plan | None = None
    gate: Gate | None = None
    """Set when a limit stopped the plan: the rate limit and an open breaker call for the
    emergency contact at once (the same bad version keeps coming back)."""


def _fmt(ts: datetime | None) -> str:
    return ts.strftime("%H:%M") if ts else "?"


def short(version: str) -> str:
    return version[:7] if len(version) == 40 else version


def _steps(f: Facts, cap: Capability) -> tuple[StepSpec, ...]:
    return tuple(f.capabilities.get(cap, ()))


def _deployment_actions(
    f: Facts, cls: IncidentClass
) -> tuple[list[tuple[Capability, tuple[StepSpec, ...]]], dict[Component | str, str], str] | str:
    target: LedgerEntry | None = deployment_target(f)
    if target is None:
        return "no known-good version older than the current one"
    if not can(f, Capability.DEPLOYMENT_ROLLBACK):
        return "no deployment executor is configured"
    cap = Capability.DEPLOYMENT_ROLLBACK
    if cls is IncidentClass.PERF_DEGRADED and can(f, Capability.DEPLOYMENT_TEST_FIRST):
        cap = Capability.DEPLOYMENT_TEST_FIRST  # a slow version is replaced only by a tested one
    actions = [(cap, _steps(f, cap))]
    targets: dict[Component | str, str] = {Component.DEPLOYMENT: target.version}
    phrase = f"rolling back to {short(target.version)} (known-good since {_fmt(target.known_good_at)})"
    rev = target.alembic_revision
    if rev and f.current_revision and rev != f.current_revision:
        if not can(f, Capability.DATABASE_DOWNGRADE):
            return (f"schema is at {f.current_revision} but {short(target.version)} ran on {rev} "
                    "and no downgrade is configured")
        # Downgrade first, while the newer code that holds the migration scripts is checked out.
        actions.insert(0, (Capability.DATABASE_DOWNGRADE, _steps(f, Capability.DATABASE_DOWNGRADE)))
        targets["revision"] = rev
        phrase += f", schema downgraded {f.current_revision} -> {rev} first"
    return actions, targets, phrase


def _release_rollback(
    f: Facts, cls: IncidentClass
) -> tuple[list[tuple[Capability, tuple[StepSpec, ...]]], dict[Component | str, str], str] | None:
    """A release is its code and its schema: when the migration came with a deploy (the
    current version is not known-good), schema and code go back together, schema first. A
    downgrade alone would leave the new code, whose next `alembic upgrade head` breaks again.
    None: no deploy since the known-good state, or no way to return the code."""
    cur = next((e for e in f.ledger if e.version == f.current_version), None)
    if cur is None or cur.known_good or not can(f, Capability.DATABASE_DOWNGRADE):
        return None
    found = _deployment_actions(f, cls)
    if isinstance(found, str) or "revision" not in found[1]:
        return None
    actions, targets, phrase = found
    return actions, targets, f"returning the release, schema and code: {phrase}"


def _flush_after_restore(f: Facts, actions: list[tuple[Capability, tuple[StepSpec, ...]]]
                         ) -> str:
    """Sessions issued against the data a restore discards must not outlive it: the flush
    follows a database restore wherever the target's sessions executor is set up for it."""
    if not can(f, Capability.SESSIONS_FLUSH):
        return ""
    actions.append((Capability.SESSIONS_FLUSH, _steps(f, Capability.SESSIONS_FLUSH)))
    return ", then flushing the sessions"


def _key_reset(f: Facts, cls: IncidentClass, policy: PolicySettings) -> tuple[Plan, str] | None:
    """The key disaster's manual procedure, when the target is set up for it: clear what the
    lost key encrypted, write a fresh key, restart. Offered, never run without approval."""
    if not (can(f, Capability.KEY_REPLACE) and can(f, Capability.DATABASE_CLEAR_ENCRYPTED)):
        return None
    actions = [(Capability.DATABASE_CLEAR_ENCRYPTED, _steps(f, Capability.DATABASE_CLEAR_ENCRYPTED)),
               (Capability.KEY_REPLACE, _steps(f, Capability.KEY_REPLACE))]
    plan = build_plan(PlanKind.KEY_RESET, cls, actions, {}, {Component.KEY: f.current_key},
                      policy.verify_timeout)
    return plan, (f"{KEY_DISASTER}; the manual procedure (clear the encrypted columns, write a "
                  "fresh key, restart) needs an explicit approval")


def _plan(kind: PlanKind, cls: IncidentClass, f: Facts,
          policy: PolicySettings) -> tuple[Plan, str] | str:
    """The plan and its phrase for the reason, or why there is none."""
    current: dict[Component | str, str | None] = {
        Component.DEPLOYMENT: f.current_version, "revision": f.current_revision,
        Component.KEY: f.current_key,
    }
    actions: list[tuple[Capability, tuple[StepSpec, ...]]] = []
    targets: dict[Component | str, str] = {}
    phrase = ""
    if kind is PlanKind.ESCALATE:
        return "escalate-only by policy" if cls is not IncidentClass.DEPENDENCY_DOWN else (
            "a dependency is down: not rolling back the deployment")
    if kind is PlanKind.DEPLOYMENT_ROLLBACK:
        found = _deployment_actions(f, cls)
        if isinstance(found, str):
            return found
        actions, targets, phrase = found
    elif kind is PlanKind.DATABASE_ROLLBACK:
        rev = downgrade_revision(f)
        backup = restore_backup(f)
        release = _release_rollback(f, cls) if rev else None
        if release is not None:
            actions, targets, phrase = release
        elif rev and can(f, Capability.DATABASE_DOWNGRADE):
            actions = [(Capability.DATABASE_DOWNGRADE, _steps(f, Capability.DATABASE_DOWNGRADE))]
            targets = {"revision": rev}
            phrase = f"downgrading the schema {f.current_revision} -> {rev}"
        elif backup and can(f, Capability.DATABASE_RESTORE):
            actions = [(Capability.DATABASE_RESTORE, _steps(f, Capability.DATABASE_RESTORE))]
            targets = {Component.DATABASE: str(backup.id)}
            phrase = f"restoring backup #{backup.id} from {_fmt(backup.created_at)}"
            phrase += _flush_after_restore(f, actions)
        else:
            return ("no migration ran since the known-good version and no verified backup "
                    "older than the onset can be restored")
    elif kind is PlanKind.DATA_RECOVERY:
        flushed = ""
        if damaged(f, Component.DATABASE):
            backup = restore_backup(f)
            if backup is None or not can(f, Capability.DATABASE_RESTORE):
                return "no verified backup older than the onset can be restored"
            actions = [(Capability.DATABASE_RESTORE, _steps(f, Capability.DATABASE_RESTORE))]
            targets = {Component.DATABASE: str(backup.id)}
            phrase = f"restoring backup #{backup.id} from {_fmt(backup.created_at)}"
            flushed = _flush_after_restore(f, actions)
            phrase += flushed
        if damaged(f, Component.SESSIONS) and not flushed:  # a flush supersedes lost sessions
            snap = sessions_backup(f)
            if snap is None or not can(f, Capability.SESSIONS_RESTORE):
                return "sessions were lost and no verified snapshot of them older than the " \
                    "onset can be restored"
            actions.append((Capability.SESSIONS_RESTORE, _steps(f, Capability.SESSIONS_RESTORE)))
            targets[Component.SESSIONS] = str(snap.id)
            phrase += (", then " if phrase else "") + (
                f"restoring the lost sessions and tokens from snapshot #{snap.id} of "
                f"{_fmt(snap.created_at)} (keys deleted on purpose since, such as logouts, "
                "come back)")
        cur = next((e for e in f.ledger if e.version == f.current_version), None)
        if cur is not None and not cur.known_good:  # a deploy since the last good state
            dep = _deployment_actions(f, cls)
            if not isinstance(dep, str):
                actions += dep[0]
                targets.update(dep[1])
                phrase += f", then {dep[2]}"
    elif kind is PlanKind.KEY_RESTORE:
        kb = key_backup(f)
        if kb is None:
            return _key_reset(f, cls, policy) or KEY_DISASTER
        if not can(f, Capability.KEY_RESTORE):
            return "no key executor is configured"
        actions = [(Capability.KEY_RESTORE, _steps(f, Capability.KEY_RESTORE))]
        targets = {Component.KEY: str(kb.id)}
        phrase = f"restoring the key from backup #{kb.id} ({_fmt(kb.created_at)})"
    plan = build_plan(kind, cls, actions, targets, current, policy.verify_timeout)
    return plan, phrase


def _loss(f: Facts, plan: Plan) -> int | None:
    backup_id = plan.targets.get(Component.DATABASE)
    b = next((b for b in f.backups if str(b.id) == backup_id), None)
    return b.writes_since if b else None


def decide(
    incident_class: IncidentClass,
    evidence: str,
    facts: Facts,
    history: History,
    now: datetime,
    policy: PolicySettings,
    target: str = "",
) -> Decision:
    """Whether and how to remediate; every answer carries one sentence with its figures."""
    cls = incident_class

    def verdict(action: Action, why: str, plan: Plan | None = None,
                gate: Gate | None = None) -> Decision:
        return Decision(action, cls, f"{cls}: {evidence}; {why}", plan, gate)

    class_policy = policy.classes.get(cls.value)
    if class_policy is not None and not class_policy.enabled:
        return verdict(Action.IGNORE, "class disabled for this target")
    for okind in (OverrideKind.PAUSE, OverrideKind.MAINTENANCE):
        o = active(history.overrides, target, now, okind)
        if o is not None:
            return verdict(Action.SUPPRESS, f"{okind} until {_fmt(o.until)} ({o.reason}): "
                           "observing only")
    window = in_maintenance(policy.maintenance, now)
    if window is not None:
        return verdict(Action.SUPPRESS, f"in the maintenance window {','.join(window.days)} "
                       f"{window.start}: observing only")
    flaps = [t for t in history.transitions if now - t < timedelta(seconds=policy.flap_window)]
    if len(flaps) >= policy.flap_changes:
        return verdict(Action.HOLD, f"flapping: {len(flaps)} state changes in "
                       f"{policy.flap_window:g}s (limit {policy.flap_changes}): holding for a person")
    kind = PlanKind(class_policy.plan) if class_policy and class_policy.plan else DEFAULT_PLANS[cls]
    if (class_policy is not None and class_policy.escalate_only) \
            or cls is IncidentClass.DEPENDENCY_DOWN:  # never blame a deployment, whatever the config
        kind = PlanKind.ESCALATE
    found = _plan(kind, cls, facts, policy)
    if isinstance(found, str):
        return verdict(Action.ESCALATE, found + ": escalating")
    plan, phrase = found
    if plan.kind is PlanKind.KEY_RESET:
        # Never automatic, so the limits, cooldown and breaker that guard automatic action do
        # not apply: a person reads the disaster text and decides.
        if policy.shadow or policy.dry_run:
            return verdict(Action.DRY_RUN, f"{phrase}; {'shadow' if policy.shadow else 'dry run'}"
                           ": not offered for approval", plan)
        return verdict(Action.AWAIT_APPROVAL, f"{phrase}: waiting for approval", plan)
    breaker = breaker_now(history.breakers.get(plan.kind, history.breaker), now,
                          policy.breaker_reset)
    if breaker.mode is BreakerMode.OPEN:
        return verdict(Action.ESCALATE, f"circuit breaker for {plan.kind} open since "
                       f"{_fmt(breaker.opened_at)} after failed remediations: acting no more", plan,
                       Gate.BREAKER_OPEN)
    if not policy.auto_rollback:
        return verdict(Action.ESCALATE, f"would be {phrase}, but automatic rollback is off", plan)
    recent = [t for t in history.rollbacks if now - t < timedelta(seconds=policy.window)]
    if len(recent) >= policy.max_rollbacks:
        return verdict(Action.ESCALATE, f"{len(recent)} automatic rollbacks in the last "
                       f"{policy.window:g}s (limit {policy.max_rollbacks}): not rolling back", plan,
                       Gate.RATE_LIMIT)
    last = max(history.rollbacks, default=None)  # the cooldown may be longer than the window
    if last is not None and now - last < timedelta(seconds=policy.cooldown):
        return verdict(Action.ESCALATE, f"in cooldown after the rollback at {_fmt(last)}", plan,
                       Gate.COOLDOWN)
    if breaker.mode is BreakerMode.HALF_OPEN:
        phrase += "; breaker half-open: one attempt allowed"
    if policy.shadow or policy.dry_run:
        mode = "shadow" if policy.shadow else "dry run"
        return verdict(Action.DRY_RUN, f"{mode}: would be {phrase} at {now:%H:%M:%S}", plan)
    loss = _loss(facts, plan)
    if loss is not None:
        phrase += f"; the restore would lose {loss} writes"
    # Encrypted data is lost for good by the key reset: a person decides, whatever the policy.
    needs_approval = plan.destructive_steps and not policy.auto_destructive
    restores = Component.DATABASE in plan.targets
    # A restore whose loss could not be counted is treated as losing too much: ask a person.
    too_lossy = restores and (loss is None or loss > policy.restore_loss_threshold)
    if needs_approval or too_lossy:
        steps = ", ".join(plan.destructive_steps) or "restore"
        return verdict(Action.AWAIT_APPROVAL, f"{phrase}; destructive ({steps}): waiting for "
                       "approval", plan)
    return verdict(Action.EXECUTE, phrase, plan)

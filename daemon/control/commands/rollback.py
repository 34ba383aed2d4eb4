"""A manual rollback: planned by the policies, run by the runner, gated unless forced."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from daemon.clock import now_utc
from daemon.control.commands.args import flag_arg, ledger_version, monitor_arg
from daemon.control.commands.registry import command
from daemon.control.protocol import CommandError
from daemon.control.server import Peer
from daemon.journal import Incident
from policies.classify import IncidentClass
from policies.decision import Action, Decision, History, decide
from policies.lifecycle import TRANSITIONS, State
from policies.plans import Plan, plan_to_dict
from policies.targets import Facts

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.monitor import TargetMonitor

ASKED = "manual rollback requested"
DEPLOYMENT_CLASSES = (IncidentClass.APP_DOWN, IncidentClass.PERF_DEGRADED)


def _why(decision: Decision) -> str:
    """The decision's own sentence without the class and evidence that we put in front."""
    why = decision.reason.removeprefix(f"{decision.incident_class}: {ASKED}; ")
    return why.removesuffix(": escalating")  # a person asked: nobody else is being told


def _class(open_inc: Incident | None, to: str | None) -> IncidentClass:
    known = IncidentClass._value2member_map_
    cls = IncidentClass(open_inc.incident_class) \
        if open_inc and open_inc.incident_class in known else IncidentClass.APP_DOWN
    # A named version is a deployment: only classes whose plan is a deployment rollback fit.
    return cls if to is None or cls in DEPLOYMENT_CLASSES else IncidentClass.APP_DOWN


async def _facts(m: TargetMonitor, version: str, open_inc: Incident | None) -> Facts:
    if open_inc is None:
        return await m.facts(version, None)
    return await m.facts(version, open_inc.onset_at, list(open_inc.evidence.get("failing", [])))


async def _plan(m: TargetMonitor, args: dict[str, Any],
                open_inc: Incident | None) -> tuple[Plan, str, str | None]:
    """The plan, its phrase, and the gate a --force would have to override (None: no gate)."""
    current = await m.current_version(0.0)
    if current is None:
        raise CommandError("no_plan", f"{m.name} has no deployment whose version can be read: "
                           "nothing to roll back")
    to = args.get("to")
    facts = await _facts(m, current, open_inc)
    if to is not None:
        entry = ledger_version(list(facts.ledger), to)
        if entry.version == current:
            raise CommandError("bad_args", f"{entry.version[:12]} is already deployed")
        if not entry.known_good:
            why = f"marked bad: {entry.bad_reason}" if entry.bad_at else "not known-good yet"
            raise CommandError("not_known_good", f"{entry.version[:12]} is {why}; only a "
                               "known-good version is a rollback target (see unmark)")
        facts = replace(facts, ledger=(entry,))  # the policies choose among this one version
    cls = _class(open_inc, to)
    # The plan as the tree would build it with no limits in the way...
    unlimited = m.policy.model_copy(update={
        "auto_rollback": True, "dry_run": False, "shadow": False, "classes": {},
        "maintenance": [], "auto_destructive": True, "restore_loss_threshold": 2**62,
        "max_rollbacks": 2**31})
    plain = decide(cls, ASKED, facts, History(), now_utc(), unlimited, m.name)
    if plain.plan is None:
        raise CommandError("no_plan", f"no rollback plan for {m.name}: {_why(plain)}")
    # ...and what the limits, cooldown, breaker, pause and approval rules say about it now.
    manual = m.policy.model_copy(update={"auto_rollback": True, "dry_run": False,
                                         "shadow": False, "classes": {}})
    gated = decide(cls, ASKED, facts, m.history(), now_utc(), manual, m.name)
    gate = None if gated.action is Action.EXECUTE else _why(gated)
    return plain.plan, _why(plain), gate


def _incident_for(d: Daemon, m: TargetMonitor, open_inc: Incident | None, plan: Plan,
                  reason: str) -> tuple[int, bool]:
    """Take the target's open incident over when nothing ran in it yet; else open a new one."""
    takeover = (open_inc is not None and not d.journal.steps.of(open_inc.id)
                and State.REMEDIATING in TRANSITIONS[State(open_inc.state)])
    plan_json = json.dumps(plan_to_dict(plan))
    if open_inc is not None and takeover:
        d.journal.incidents.mark_manual(open_inc.id)
        d.journal.incidents.update(open_inc.id, "manual", reason, reason=reason, plan=plan_json)
        return open_inc.id, True
    incident_id = d.journal.incidents.open(m.name, plan.incident_class.value, reason, None,
                                           {"manual": True}, automatic=False)
    d.journal.incidents.update(incident_id, "manual", reason, plan=plan_json)
    if open_inc is not None:
        d.journal.incidents.add_event(open_inc.id, "superseded", f"manual rollback in incident "
                                      f"{incident_id}")
        if open_inc.state == State.HELD:  # so that it closes by itself once the target is well
            d.journal.incidents.update(open_inc.id, state=State.ESCALATED.value)
    return incident_id, False


@command("rollback", "roll a target back now: to=VERSION, dry_run, force (past limits, cooldown, "
         "breaker, pause or approval; recorded)")
async def _rollback(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    force, dry_run = flag_arg(args, "force"), flag_arg(args, "dry_run")
    # The monitor's own evaluation holds this lock from its busy check to its start: holding it
    # too, an automatic rollback cannot start between our check and ours.
    async with m._eval_lock:
        return await _rollback_locked(d, target, m, args, peer, force, dry_run)


async def _rollback_locked(d: Daemon, target: str, m: TargetMonitor, args: dict[str, Any],
                           peer: Peer, force: bool, dry_run: bool) -> Any:
    found = d.journal.incidents.open_for(target)
    if m.busy or (found and found.state in (State.REMEDIATING, State.VERIFYING)):
        raise CommandError("busy", f"{target} is already running a plan"
                           + (f" (incident {found.id})" if found else ""))
    # Only an incident of the decision tree is planned from or taken over; a lockdown request
    # (or any other procedure) stays as it is.
    tree = found is not None and found.incident_class in IncidentClass._value2member_map_
    open_inc = found if tree else None
    plan, phrase, gate = await _plan(m, args, open_inc)
    summary = {"target": target, "plan": plan.kind.value, "steps": plan.step_names,
               "to": {str(k): v for k, v in plan.targets.items()},
               "from": plan.current_version, "reason": phrase, "gate": gate}
    if dry_run:
        return {**summary, "dry_run": True, "needs_force": gate is not None}
    if gate is not None and not force:
        raise CommandError("needs_force", f"refused: {gate}. --force runs it anyway (recorded "
                           "in the audit log and the incident)")
    reason = f"manual rollback by uid {peer.uid}: {phrase}"
    if gate is not None:
        reason += f"; forced past: {gate}"
    incident_id, took_over = _incident_for(d, m, open_inc, plan, reason)
    if gate is not None:
        d.journal.incidents.add_event(incident_id, "forced", f"--force by uid {peer.uid} pid {peer.pid} "
                                      f"past: {gate}")
    m.start(incident_id, plan)
    return {**summary, "id": incident_id, "took_over": took_over, "forced": gate is not None}

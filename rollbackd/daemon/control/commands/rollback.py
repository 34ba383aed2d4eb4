"""A manual rollback: planned by the policies, run through the target's incident desk, gated
unless forced."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.control.commands.args import flag_arg, ledger_version, monitor_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.manual import manual_class, plan_manual
from rollbackd.policies.plans import Plan
from rollbackd.policies.targets import Facts

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace
    from rollbackd.daemon.journal import Incident
    from rollbackd.daemon.monitor import TargetMonitor


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
            raise CommandError("no_plan", f"{entry.version[:12]} is already deployed")
        if not entry.known_good:
            why = f"marked bad: {entry.bad_reason}" if entry.bad_at else "not known-good yet"
            raise CommandError("not_known_good", f"{entry.version[:12]} is {why}; only a "
                               "known-good version is a rollback target (see unmark)")
        facts = replace(facts, ledger=(entry,))  # the policies choose among this one version
    cls = manual_class(open_inc.incident_class if open_inc else None, to)
    found = plan_manual(cls, facts, m.history(), now_utc(), m.policy, m.name)
    if found.plan is None:
        raise CommandError("no_plan", f"no rollback plan for {m.name}: {found.why}")
    return found.plan, found.why, found.gate


@command("rollback", "roll a target back now: to=VERSION, dry_run, force (past limits, cooldown, "
         "breaker, pause or approval; recorded)")
async def _rollback(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    force, dry_run = flag_arg(args, "force"), flag_arg(args, "dry_run")
    desk = m.desk
    # Under the desk's lock, an automatic rollback cannot start between our check and ours.
    async with desk.lock:
        found = desk.current()
        if desk.busy or (found and found.state in ("remediating", "verifying")):
            raise CommandError("busy", f"{target} is already running a plan"
                               + (f" (incident {found.id})" if found else ""))
        # Only an incident of the decision tree is planned from; a lockdown request stays.
        tree = found is not None and found.incident_class in IncidentClass._value2member_map_
        plan, phrase, gate = await _plan(m, args, found if tree else None)
        summary = {"target": target, "plan": plan.kind.value, "steps": plan.step_names,
                   "to": {str(k): v for k, v in plan.targets.items()},
                   "from": plan.current_version, "reason": phrase, "gate": gate}
        if dry_run:
            return {**summary, "dry_run": True, "needs_force": gate is not None}
        if gate is not None and not force:
            raise CommandError("needs_force", f"refused: {gate}. --force runs it anyway "
                               "(recorded in the audit log and the incident)")
        reason = f"manual rollback by uid {peer.uid}: {phrase}"
        if gate is not None:
            reason += f"; forced past: {gate}"
        incident_id, took_over = desk.open_manual(plan, reason, f"uid {peer.uid} pid {peer.pid}",
                                                  gate)
    return {**summary, "id": incident_id, "took_over": took_over, "forced": gate is not None}


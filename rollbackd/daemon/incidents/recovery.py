"""Start-up recovery: a step a crash left `running` is checked against the world.

Found done -> journaled done ("found done after restart") and the plan goes on under the same
approval rules: on its own only if it was running on its own and nothing left in it needs an
approval; otherwise it is held, saying the step was found done. Found absent -> held for a
person, who resumes (`approve`, the step runs again) or abandons (`deny`). Partial or unknown ->
held with what was found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.incidents.desk import IncidentDesk
from rollbackd.daemon.incidents.effect_check import effect_of
from rollbackd.daemon.journal import Incident, Journal, StepRecord
from rollbackd.daemon.report import write_report
from rollbackd.daemon.rollback.base import Effect, Found, unknown
from rollbackd.policies.lifecycle import State
from rollbackd.policies.overrides import OverrideKind, active
from rollbackd.policies.plans import Plan

log = logging.getLogger("rollbackd.incidents")

FOUND_DONE = "found done after restart"


def hold_interrupted(journal: Journal, outbox: Outbox, reports_dir: Path,
                     target: str | None = None) -> list[int]:
    """Hold, unasked, every incident (of `target`, or all) whose step a crash cut off: for
    incidents whose target has no executors to ask (removed from the config)."""
    held = []
    for incident, step in journal.steps.recover_interrupted(target):
        log.warning("incident=%d target=%s step=%s status=interrupted action=held",
                    incident.id, incident.target, step.name)
        write_report(journal, reports_dir, incident.id)
        outbox.send(notices.held(incident, step))
        held.append(incident.id)
    return held


async def recover_interrupted(journal: Journal, outbox: Outbox, reports_dir: Path,
                              desks: Mapping[str, IncidentDesk],
                              target: str | None = None) -> list[int]:
    """Check every step a crash cut off (of `target`, or all); returns the incidents held."""
    held = []
    for inc, step in journal.steps.running(target):
        desk = desks.get(inc.target)
        if desk is None:
            continue  # no executor can be asked: held unasked below
        if await _recover(journal, outbox, reports_dir, desk, inc, step):
            held.append(inc.id)
    return held + hold_interrupted(journal, outbox, reports_dir, target)


async def _recover(journal: Journal, outbox: Outbox, reports_dir: Path, desk: IncidentDesk,
                   inc: Incident, step: StepRecord) -> bool:
    """One cut-off step: settled, and its incident held or its plan resumed. True if held."""
    plan = desk.stored_plan(inc.id)
    if plan is None:
        effect = unknown("the incident has no stored plan to tell what the step was")
    else:
        effect = await effect_of(desk.runner, journal, plan, inc.id, step.name, step.started_at)
    if effect.local and effect.found is Found.ABSENT and desk.runner.guard is not None:
        # Several instances: the owner that ran the step kept its records on its own host.
        effect = unknown(f"{effect.what}, but the step ran on the instance that owned the "
                         "target then, whose records are not here")
    log.warning("incident=%d target=%s step=%s status=interrupted effect=%s found=%r",
                inc.id, inc.target, step.name, effect.found, effect.what)
    journal.steps.settle(step.id, effect.found is Found.DONE, _detail(effect))
    if effect.found is Found.DONE:
        journal.incidents.add_event(inc.id, "found_done", f"step {step.name} {FOUND_DONE}: {effect.what}")
        assert plan is not None
        wait = _why_wait(journal, desk, inc, plan)
        if wait is None and not any(s.state == "running" for s in journal.steps.of(inc.id)):
            journal.incidents.add_event(inc.id, "resumed", "the plan goes on by itself: it was running "
                              "by itself and no step left needs an approval")
            log.info("incident=%d target=%s action=resumed", inc.id, inc.target)
            desk.go_on(inc.id, plan)
            return False
        why = (f"step {step.name} was interrupted by a daemon stop, and {FOUND_DONE} "
               f"({effect.what}); the rest of the plan waits for a person: {wait}")
    elif effect.found is Found.ABSENT:
        why = (f"step {step.name} was interrupted (daemon stopped while it ran); its effect is "
               f"absent ({effect.what}); not run again automatically: a person must decide")
    else:
        why = (f"step {step.name} was interrupted (daemon stopped while it ran); its effect is "
               f"unknown or partial: {effect.what}; not run again automatically: a person "
               "must look first")
    held = journal.incidents.hold(inc.id, why)
    write_report(journal, reports_dir, inc.id)
    settled = next(s for s in journal.steps.of(inc.id) if s.id == step.id)
    outbox.send(notices.held(held, settled, effect))
    return True


def _detail(effect: Effect) -> str:
    if effect.found is Found.DONE:
        return f"{FOUND_DONE}: {effect.what}"
    return f"interrupted; effect {effect.found} after restart: {effect.what}"


def _why_wait(journal: Journal, desk: IncidentDesk, inc: Incident, plan: Plan) -> str | None:
    """Why the plan may not go on by itself after a restart, or None: the same approval rules
    as when it started (a person's approval is not carried over a crash)."""
    if inc.state != State.REMEDIATING:
        return f"the incident was {inc.state}"
    extras = journal.incidents.extras(inc.id)
    if extras is None or not extras.automatic:
        return "a person started this plan, so a person resumes it"
    if any(event == "approved" for _, event, _ in journal.incidents.timeline(inc.id)):
        return "the plan ran on a person's approval, so a person resumes it"
    policy = desk.view.policy
    if policy.dry_run or policy.shadow:
        return "the target's policy is dry run"
    for kind in (OverrideKind.PAUSE, OverrideKind.MAINTENANCE):
        if active(journal.overrides.active(), inc.target, now_utc(), kind) is not None:
            return f"the target is under {kind}"
    done = {s.name for s in journal.steps.of(inc.id) if s.state == "done"}
    destructive = [s.name for s in plan.steps if s.destructive and s.name not in done]
    if destructive and not policy.auto_destructive:
        return f"steps left need an approval ({', '.join(destructive)})"
    return None

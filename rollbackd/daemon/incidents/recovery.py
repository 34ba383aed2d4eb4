"""Start-up recovery: a step a crash left `running` is checked against the world.

Found done -> journaled done ("found done after restart") and the plan goes on under the same
approval rules: on its own only if it was running on its own and nothing left in it needs an
approval; otherwise it is held, saying the step was found done. Found absent -> held for a
person, who resumes (`approve`, the step runs again) or abandons (`deny`). Partial or unknown ->
held with what was found.

A plan with no step running whose incident is still remediating or verifying was cut off before
its end committed (the end, the ledger, the breaker and the mail are one transaction): every step
done -> the plan goes on and closes the incident; its last step failed -> held. Cut off between
two steps (the next one never started, so its effect is absent): the plan goes on under the same
approval rules as a step found done, or is held saying why it waits. Each hold and its mail
commit together, so the mail is queued once, whenever the daemon dies.
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
    with journal.database.tx():  # the holds and their mails, or none of them
        for incident, step in journal.steps.recover_interrupted(target):
            log.warning("incident=%d target=%s step=%s status=interrupted action=held",
                        incident.id, incident.target, step.name)
            outbox.send(notices.held(incident, step))
            held.append(incident.id)
    for incident_id in held:
        write_report(journal, reports_dir, incident_id)
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
    held += hold_interrupted(journal, outbox, reports_dir, target)
    return held + close_cut_off(journal, outbox, reports_dir, desks, target)


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
    with journal.database.tx():  # the step settled, and the incident held with its mail or resumed
        journal.steps.settle(step.id, effect.found is Found.DONE, _detail(effect))
        if effect.found is Found.DONE:
            journal.incidents.add_event(inc.id, "found_done",
                                        f"step {step.name} {FOUND_DONE}: {effect.what}")
            assert plan is not None
            wait = _why_wait(journal, desk, inc, plan)
            if wait is None and not any(s.state == "running" for s in journal.steps.of(inc.id)):
                journal.incidents.add_event(inc.id, "resumed", "the plan goes on by itself: it "
                                            "was running by itself and no step left needs an "
                                            "approval")
                goes_on = True
            else:
                goes_on = False
                _hold(journal, outbox, inc.id, step.id, effect,
                      f"step {step.name} was interrupted by a daemon stop, and {FOUND_DONE} "
                      f"({effect.what}); the rest of the plan waits for a person: {wait}")
        elif effect.found is Found.ABSENT:
            goes_on = False
            _hold(journal, outbox, inc.id, step.id, effect,
                  f"step {step.name} was interrupted (daemon stopped while it ran); its effect is "
                  f"absent ({effect.what}); not run again automatically: a person must decide")
        else:
            goes_on = False
            _hold(journal, outbox, inc.id, step.id, effect,
                  f"step {step.name} was interrupted (daemon stopped while it ran); its effect is "
                  f"unknown or partial: {effect.what}; not run again automatically: a person "
                  "must look first")
    if goes_on:
        assert plan is not None
        log.info("incident=%d target=%s action=resumed", inc.id, inc.target)
        desk.go_on(inc.id, plan)
        return False
    write_report(journal, reports_dir, inc.id)
    return True


def _hold(journal: Journal, outbox: Outbox, incident_id: int, step_id: int,
          effect: Effect | None, why: str) -> None:
    """Inside the caller's transaction: the incident held, saying why, and its mail queued."""
    held = journal.incidents.hold(incident_id, why)
    step = next(s for s in journal.steps.of(incident_id) if s.id == step_id)
    outbox.send(notices.held(held, step, effect))


def close_cut_off(journal: Journal, outbox: Outbox, reports_dir: Path,
                  desks: Mapping[str, IncidentDesk], target: str | None = None) -> list[int]:
    """Plans a crash cut off with no step running, before their incident's end committed:
    every step done -> the plan goes on, which closes the incident and mails it once; the last
    step failed (or held) -> held, with the mail of that step. Returns the incidents held."""
    held = []
    for inc in journal.steps.unclosed(target):
        desk = desks.get(inc.target)
        if desk is not None and desk.busy:
            continue  # resumed above: the plan running now ends the incident itself
        plan = desk.stored_plan(inc.id) if desk is not None else None
        steps = journal.steps.of(inc.id)
        done = {s.name for s in steps if s.state == "done"}
        if desk is not None and plan is not None and done >= set(plan.step_names):
            log.warning("incident=%d target=%s status=unclosed action=close reason=%r", inc.id,
                        inc.target, "every step is done; the daemon stopped before the end")
            journal.incidents.add_event(inc.id, "resumed", "every step was done when the daemon "
                                        "stopped, before the incident's end was journaled")
            desk.go_on(inc.id, plan)  # nothing left to run: the runner closes it
            continue
        if steps and steps[-1].state == "done":
            if _between_steps(journal, outbox, reports_dir, desk, inc, plan, steps[-1]):
                held.append(inc.id)
            continue
        if not steps or steps[-1].state != "failed":
            log.warning("incident=%d target=%s status=unclosed action=none reason=%r", inc.id,
                        inc.target, "no step of the plan ran")
            continue
        last = steps[-1]
        log.warning("incident=%d target=%s step=%s status=unclosed action=held", inc.id,
                    inc.target, last.name)
        with journal.database.tx():
            _hold(journal, outbox, inc.id, last.id, None,
                  f"step {last.name} failed: {last.detail}; the daemon stopped before the "
                  "incident was closed: a person must decide")
        write_report(journal, reports_dir, inc.id)
        held.append(inc.id)
    return held


def _between_steps(journal: Journal, outbox: Outbox, reports_dir: Path,
                   desk: IncidentDesk | None, inc: Incident, plan: Plan | None,
                   last: StepRecord) -> bool:
    """A plan cut off after `last` was journaled done and before the next step started: the
    next step's effect is absent (it never ran), so the plan goes on if it may by itself, as
    after a step found done; else held, saying why. True if held."""
    nxt = next((n for n in plan.step_names if n not in
                {s.name for s in journal.steps.of(inc.id) if s.state == "done"}), None) \
        if plan is not None else None
    where = f"between steps {last.name} and {nxt or 'the next'}"
    if desk is None or plan is None:
        wait: str | None = "no executor of the target can run the rest (removed from the config)" \
            if desk is None else "the incident has no stored plan"
    else:
        wait = _why_wait(journal, desk, inc, plan)
    log.warning("incident=%d target=%s status=unclosed where=%r action=%s", inc.id, inc.target,
                where, "resumed" if wait is None else "held")
    if wait is None:
        assert desk is not None and plan is not None
        journal.incidents.add_event(inc.id, "resumed", f"the daemon stopped {where}; "
                                    f"{nxt} had not started, and the plan goes on by itself: it "
                                    "was running by itself and no step left needs an approval")
        desk.go_on(inc.id, plan)
        return False
    with journal.database.tx():
        held = journal.incidents.hold(
            inc.id, f"the daemon stopped {where} ({nxt} had not started); the rest of the plan "
            f"waits for a person: {wait}")
        outbox.send(notices.held(held, last, between=True))
    write_report(journal, reports_dir, inc.id)
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

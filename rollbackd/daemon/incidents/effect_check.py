"""After a crash: did the step the crash cut off have its effect? The runner's own steps are
checked here, every other step by its executor (`Executor.effect`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.rollback.base import CHECK_ONLY, Effect, absent, done, unknown
from rollbackd.daemon.rollback.store_wiring import StoreWiring
from rollbackd.daemon.runner import RUNNER_COMPONENTS, Runner
from rollbackd.policies.plans import Component, Plan

log = logging.getLogger("rollbackd.incidents")

EFFECT_TIMEOUT = 60.0
"""Seconds one effect check may take: an engine or database that does not answer is UNKNOWN."""
KINDS = {Component.DATABASE: "database", Component.KEY: "key", Component.SESSIONS: "sessions"}
"""The backup kind each data component's checklist backup is cataloged under."""


async def effect_of(runner: Runner, journal: Journal, plan: Plan, incident_id: int, name: str,
                    since: datetime) -> Effect:
    """What is found of step `name` of the plan, journaled running at `since`. Never raises."""
    spec = next((s for s in plan.steps if s.name == name), None)
    if spec is None:
        return unknown(f"the plan has no step {name}")
    ctx = runner.context(incident_id, plan)
    try:
        if spec.component in RUNNER_COMPONENTS:
            return _runner_step(runner, journal, plan, incident_id, name, since)
        executor = runner.components.get(spec.component)
        if executor is None:
            return unknown(f"no {spec.component} executor is configured to ask")
        return await asyncio.wait_for(executor.effect(name, ctx, since), EFFECT_TIMEOUT)
    except TimeoutError:
        return unknown(f"checking it took longer than {EFFECT_TIMEOUT:g}s")
    except Exception as exc:  # noqa: BLE001 - a check that fails tells nothing: a person looks
        log.warning("incident=%d step=%s effect=unknown reason=%r", incident_id, name, str(exc))
        return unknown(f"checking it failed: {type(exc).__name__}: {exc}")


def _runner_step(runner: Runner, journal: Journal, plan: Plan, incident_id: int, name: str,
                 since: datetime) -> Effect:
    if name == "capture_evidence":  # its only effect is the journal's evidence
        if any(event == "evidence" and at >= since for at, event, _ in journal.incidents.timeline(
                incident_id)):
            return done("the evidence is in the journal")
        return absent("no evidence was captured since the step began")
    if name == "notify":
        sent = journal.mail.since(incident_id, since)
        if sent:
            return done(f"its mail is in the outbox ({', '.join(sent)})")
        return absent("no mail of it is in the outbox")
    if name == "backup_current":
        return _backups(runner, plan, incident_id, since)
    if name == "record_incident":
        report = runner.reports_dir / f"incident-{incident_id}.md"
        if report.exists() and report.stat().st_mtime >= since.timestamp():
            return done(f"the report {report.name} is written")
        return absent("the report was not written since the step began")
    return CHECK_ONLY  # verify_target, verify: they only look


def _backups(runner: Runner, plan: Plan, incident_id: int, since: datetime) -> Effect:
    """The checklist's backup: every data executor of the plan has a backup of this incident."""
    taken: list[str] = []
    missing: list[str] = []
    for executor in runner.involved(plan):
        kind = KINDS.get(executor.component)
        if kind is None or not isinstance(executor, StoreWiring):
            continue  # a deployment keeps its state itself (commit, image, ReplicaSet)
        mine = [b for b in executor.store.for_incident(kind, incident_id)
                if b.created_at >= since]
        (taken if mine else missing).append(f"{kind} {mine[-1].describe()}" if mine else kind)
    if not missing:
        return done("backed up: " + (", ".join(taken) or "nothing to back up"))
    if not taken:
        return absent(f"no backup of {', '.join(missing)} was taken for this incident")
    return unknown(f"backed up: {', '.join(taken)}; not backed up: {', '.join(missing)}")

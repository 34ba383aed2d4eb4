"""One target's monitor: runs probes, debounces, keeps the ledger, decides, starts the runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.config import TargetConfig
from daemon.escalation.outbox import Outbox
from daemon.journal.store import Journal, now_utc
from daemon.metrics import Metrics
from daemon.rollback.base import Executor
from daemon.rollback.git_service import GitServiceExecutor
from daemon.runner import Runner
from policies.classify import all_passing, classify
from policies.debounce import ProbeHealth, debounce
from policies.decision import Action, Decision, History, decide
from policies.ledger import LedgerEntry, observe
from policies.settings import PolicySettings
from probes.base import Probe, ProbeSettings
from probes.observation import Observation, Status, Symptom
from probes.registry import build_probe

log = logging.getLogger("rollbackd.monitor")

# An incident in one of these states closes by itself once every probe passes again.
SELF_CLOSING = ("escalated", "dry_run")


async def run_probe(probe: Probe, timeout: float) -> Observation:
    """The scheduler owns the timeout; whatever escapes a probe becomes an error observation."""
    started = time.monotonic()
    try:
        return await asyncio.wait_for(probe.check(), timeout)
    except TimeoutError:
        return Observation(probe.name, probe.kind, Status.FAIL, f"timed out after {timeout:g}s",
                           time.monotonic() - started, Symptom.TIMEOUT)
    except Exception as exc:
        return Observation(probe.name, probe.kind, Status.ERROR,
                           f"probe crashed: {type(exc).__name__}: {exc}",
                           time.monotonic() - started, Symptom.PROBE_ERROR)


class TargetMonitor:
    def __init__(self, name: str, config: TargetConfig, policy: PolicySettings, journal: Journal,
                 outbox: Outbox, metrics: Metrics, reports_dir: Path,
                 fault_hook: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.policy = policy
        self.journal = journal
        self.outbox = outbox
        self.metrics = metrics
        self.settings: dict[str, ProbeSettings] = dict(config.probes)
        self.probes: dict[str, Probe] = {p: build_probe(p, s) for p, s in self.settings.items()}
        self.health: dict[str, ProbeHealth] = {p: ProbeHealth() for p in self.probes}
        self.executor: Executor | None = (
            GitServiceExecutor(config.deployment) if config.deployment else None
        )
        self.runner = (
            Runner(name, journal, self.executor, outbox, metrics, policy, self.verify,
                   self.probe_evidence, reports_dir, fault_hook)
            if self.executor else None
        )
        self.task: asyncio.Task[bool] | None = None
        self._version: tuple[float, str | None] = (0.0, None)
        self._eval_lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def target_health(self) -> dict[str, tuple[str, ProbeHealth]]:
        return {p: (self.settings[p].kind, h) for p, h in self.health.items()}

    def probe_evidence(self) -> dict[str, Any]:
        return {
            p: {"status": h.last.status, "detail": h.last.detail, "at": h.last.at.isoformat(),
                "failing": h.failing}
            for p, h in self.health.items() if h.last is not None
        }

    def _record(self, obs: Observation) -> None:
        s = self.settings[obs.probe]
        before = self.health[obs.probe]
        after = debounce(before, obs, s.failure_threshold, s.success_threshold)
        self.health[obs.probe] = after
        self.metrics.probe_success.labels(self.name, obs.probe).set(1 if obs.ok else 0)
        self.metrics.probe_duration.labels(self.name, obs.probe).observe(obs.duration)
        self.metrics.probe_runs.labels(self.name, obs.probe, obs.status.value).inc()
        if after.failing != before.failing or (obs.status is not Status.OK and log.isEnabledFor(
                logging.DEBUG)):
            log.info("target=%s probe=%s status=%s failing=%s detail=%r", self.name, obs.probe,
                     obs.status, after.failing, obs.detail)

    async def run_scheduled(self, probe_name: str) -> None:
        obs = await run_probe(self.probes[probe_name], self.settings[probe_name].timeout)
        self._record(obs)
        async with self._eval_lock:
            try:
                await self.evaluate()
            except Exception:  # the daemon outlives any one bad evaluation
                log.exception("target=%s status=error reason=evaluation crashed", self.name)

    async def current_version(self, max_age: float = 2.0) -> str | None:
        if self.executor is None:
            return None
        fetched, version = self._version
        if time.monotonic() - fetched > max_age:
            version = await self.executor.current_version()
            self._version = (time.monotonic(), version)
        return version

    async def _update_ledger(self, passing: bool, max_age: float) -> str | None:
        version = await self.current_version(max_age)
        if version is None:
            return None
        now = now_utc()
        entries = {e.version: e for e in self.journal.ledger(self.name)}
        entry = entries.get(version) or LedgerEntry(version, now)
        updated = observe(entry, passing, now, self.policy.stable_after)
        if updated != entry or version not in entries:
            self.journal.save_ledger(self.name, updated)
            if updated.known_good and not entry.known_good:
                log.info("target=%s version=%s status=known-good", self.name, version[:12])
        return version

    async def evaluate(self) -> None:
        if self.busy:
            return
        health = self.target_health()
        found = classify(health)
        passing = all_passing(health)
        # A failure may follow a deploy seconds ago: decide on the version deployed now.
        version = await self._update_ledger(passing, max_age=2.0 if found is None else 0.0)
        incident = self.journal.open_incident_for(self.name)
        if found is None:
            if passing and incident and incident.state in SELF_CLOSING:
                self.journal.update_incident(incident.id, "recovered", "every probe passes again",
                                             state="resolved", closed_at=now_utc())
                log.info("target=%s incident=%d status=recovered", self.name, incident.id)
            return
        if incident is not None:
            return  # one open incident per target; it already owns these symptoms
        incident_class, probes = found
        evidence = "; ".join(f"{p} {self.health[p].last.detail}" for p in probes  # type: ignore[union-attr]
                             if self.health[p].last)
        onsets = [o for p in probes if (o := self.health[p].onset) is not None]
        onset = min(onsets, default=None)
        history = History(self.journal.rollback_starts(self.name),
                          self.journal.breaker(self.name, "deployment_rollback"))
        if self.executor is None:
            decision = Decision(Action.ESCALATE, incident_class,
                                f"{incident_class}: {evidence}; no deployment configured")
        else:
            decision = decide(incident_class, evidence, version, self.journal.ledger(self.name),
                              history, now_utc(), self.policy, self.executor.steps)
        self._open(decision, onset, version)

    def _open(self, decision: Decision, onset: datetime | None, version: str | None) -> None:
        state = {Action.EXECUTE: "open", Action.DRY_RUN: "dry_run",
                 Action.ESCALATE: "escalated"}[decision.action]
        incident_id = self.journal.open_incident(
            self.name, decision.incident_class, decision.reason, onset,
            {"probes": self.probe_evidence(), "version": version}, state=state,
        )
        self.metrics.incidents.labels(self.name, decision.incident_class).inc()
        log.info("target=%s incident=%d class=%s action=%s reason=%r", self.name, incident_id,
                 decision.incident_class, decision.action, decision.reason)
        if decision.plan is not None:
            self.journal.update_incident(incident_id, "planned", ", ".join(
                decision.plan.step_names), plan=",".join(decision.plan.step_names))
        if decision.action is Action.EXECUTE and self.runner and decision.plan:
            self.task = asyncio.create_task(self.runner.execute(incident_id, decision.plan),
                                            name=f"rollback-{self.name}-{incident_id}")
            # The rollback changes the deployed version: forget the cached one when it ends.
            self.task.add_done_callback(lambda _: setattr(self, "_version", (0.0, None)))
            return
        what = "would roll back (dry run)" if decision.action is Action.DRY_RUN else "escalated"
        self.outbox.enqueue(
            incident_id, "opened", f"[rollbackd] {self.name}: {decision.incident_class}, {what}",
            f"{decision.reason}\n\nNothing was changed. `rollbackctl show {incident_id}` has the "
            "evidence.\n",
        )

    async def verify(self, timeout: float) -> tuple[bool, str]:
        """Run every probe until each passes its success threshold in a row, within timeout."""
        needed = {p: s.success_threshold for p, s in self.settings.items()}
        streak = dict.fromkeys(needed, 0)
        pause = min(1.0, min(s.interval for s in self.settings.values()))
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            for p, probe in self.probes.items():
                if streak[p] >= needed[p]:
                    continue
                obs = await run_probe(probe, self.settings[p].timeout)
                self._record(obs)
                streak[p] = streak[p] + 1 if obs.ok else 0
                last[p] = obs.detail
            if all(streak[p] >= needed[p] for p in needed):
                return True, f"all {len(needed)} probes pass"
            await asyncio.sleep(pause)
        failing = ", ".join(f"{p} ({last.get(p, 'no answer')})" for p in needed
                            if streak[p] < needed[p])
        return False, f"still failing after {timeout:g}s: {failing}"

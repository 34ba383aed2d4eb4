"""One target's monitor: runs probes, debounces, keeps the ledger, decides, starts the runner."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.backup.losses import with_losses
from daemon.clock import now_utc
from daemon.config import TargetConfig
from daemon.escalation.outbox import Outbox
from daemon.journal import Incident, Journal
from daemon.journal.freshness import JournalBackups
from daemon.metrics import Metrics
from daemon.rollback.base import Executor
from daemon.rollback.registry import build_executors
from daemon.runner import Runner
from policies.classify import SESSION_KINDS, IncidentClass, all_passing, classify
from policies.debounce import ProbeHealth, debounce
from policies.decision import Action, Decision, History, decide
from policies.latency import LatencyState, explain, track
from policies.ledger import LedgerEntry, observe, redeployed_bad
from policies.lifecycle import SELF_CLOSING, State
from policies.overrides import OverrideKind, active
from policies.plans import Capabilities, Component, Plan, plan_from_dict, plan_to_dict
from policies.settings import PolicySettings
from policies.targets import Facts
from probes.base import Probe, ProbeSettings
from probes.observation import Observation, Status, Symptom
from probes.registry import build_probe

log = logging.getLogger("rollbackd.monitor")

# Probe kinds whose Observation.version tells the schema revision or the key fingerprint.
REVISION_KINDS = ("sqlite_integrity", "postgres_integrity")
KEY_KINDS = ("fernet_key",)

_STATE_OF = {Action.EXECUTE: State.OPEN, Action.DRY_RUN: State.DRY_RUN,
             Action.ESCALATE: State.ESCALATED, Action.AWAIT_APPROVAL: State.AWAITING_APPROVAL,
             Action.HOLD: State.HELD}


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


def journal_history(journal: Journal, target: str,
                    transitions: tuple[datetime, ...] = ()) -> History:
    """Everything the journal keeps that a decision depends on: it survives restarts."""
    return History(
        rollbacks=journal.incidents.rollback_starts(target),
        breakers={k: b for t, k, b in journal.breakers.all() if t == target},
        transitions=transitions,
        overrides=journal.overrides.active(),
    )


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
        backups = JournalBackups(journal.backups)  # what backup_freshness reads
        self.probes: dict[str, Probe] = {p: build_probe(p, s, backups)
                                         for p, s in self.settings.items()}
        self.health: dict[str, ProbeHealth] = {p: ProbeHealth() for p in self.probes}
        self.components: dict[Component, Executor] = build_executors(config)
        self.runner = Runner(name, journal, self.components, outbox, metrics, policy,
                             self.verify, self.probe_evidence, reports_dir, fault_hook)
        self.task: asyncio.Task[bool] | None = None
        self.transitions: deque[float] = deque(maxlen=64)
        """time.monotonic() of each healthy <-> failing change: a clock step must not make
        recent flapping old, or old flapping recent."""
        self._was_failing = False
        self._version: tuple[float, str | None] = (0.0, None)
        self._eval_lock = asyncio.Lock()
        self._warned_bad: str | None = None
        self._last_suppressed: str | None = None
        self.latency: dict[str, LatencyState] = {}  # per probe with a latency baseline

    @property
    def executor(self) -> Executor | None:
        return self.components.get(Component.DEPLOYMENT)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def capabilities(self) -> Capabilities:
        caps: dict[Any, Any] = {}
        for executor in self.components.values():
            caps.update(executor.capabilities())
        return caps

    def target_health(self) -> dict[str, tuple[str, ProbeHealth]]:
        return {p: (self.settings[p].kind, h) for p, h in self.health.items()}

    def probe_evidence(self) -> dict[str, Any]:
        return {
            p: {"status": h.last.status, "detail": h.last.detail, "at": h.last.at.isoformat(),
                "failing": h.failing}
            for p, h in self.health.items() if h.last is not None
        }

    def _seen(self, kinds: tuple[str, ...]) -> str | None:
        for p, h in self.health.items():
            if self.settings[p].kind in kinds and h.last is not None and h.last.version:
                return h.last.version
        return None

    def _judge_latency(self, obs: Observation) -> Observation:
        """perf_degraded: an OK answer while the windowed p95 stays above its baseline is slow."""
        settings = getattr(self.settings[obs.probe], "latency", None)
        if settings is None:
            return obs
        latency = obs.metrics.get("latency_seconds") if obs.ok else None
        state = track(self.latency.get(obs.probe, LatencyState()), settings, obs.at.timestamp(),
                      latency, all_passing(self.target_health()))
        self.latency[obs.probe] = state
        if not (state.degraded and obs.ok):
            return obs
        return dataclasses.replace(obs, status=Status.FAIL, symptom=Symptom.SLOW,
                                   detail=f"{obs.detail.rstrip('.')}, but {explain(state, settings)}.")

    def _record(self, obs: Observation) -> None:
        obs = self._judge_latency(obs)
        s = self.settings[obs.probe]
        before = self.health[obs.probe]
        after = debounce(before, obs, s.failure_threshold, s.success_threshold)
        self.health[obs.probe] = after
        self.metrics.probe_success.labels(self.name, obs.probe).set(1 if obs.ok else 0)
        self.metrics.probe_duration.labels(self.name, obs.probe).observe(obs.duration)
        self.metrics.probe_runs.labels(self.name, obs.probe, obs.status.value).inc()
        if after.failing != before.failing:
            log.info("target=%s probe=%s status=%s failing=%s detail=%r", self.name, obs.probe,
                     obs.status, after.failing, obs.detail)
        failing = any(h.failing for h in self.health.values())
        if failing != self._was_failing:
            self._was_failing = failing
            self.transitions.append(time.monotonic())

    async def run_scheduled(self, probe_name: str) -> None:
        try:
            obs = await run_probe(self.probes[probe_name], self.settings[probe_name].timeout)
            self._record(obs)
            async with self._eval_lock:
                try:
                    await self.evaluate()
                except Exception:  # the daemon outlives any one bad evaluation
                    log.exception("target=%s status=error reason=evaluation crashed", self.name)
        except asyncio.CancelledError:
            # Only shutdown cancels a probe run, and it has nothing to record; APScheduler would
            # log the cancellation as a crashed job.
            log.debug("target=%s probe=%s status=cancelled", self.name, probe_name)

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
        entries = {e.version: e for e in self.journal.ledger.entries(self.name)}
        entry = entries.get(version) or LedgerEntry(version, now)
        updated = observe(entry, passing, now, self.policy.stable_after,
                          self._seen(REVISION_KINDS), self._seen(KEY_KINDS))
        if updated != entry or version not in entries:
            self.journal.ledger.save(self.name, updated)
            if updated.known_good and not entry.known_good:
                log.info("target=%s version=%s status=known-good", self.name, version[:12])
        self._report_bad_redeploy(list(entries.values()), version)
        return version

    def _report_bad_redeploy(self, entries: list[LedgerEntry], version: str) -> None:
        bad = redeployed_bad(entries, version)
        if bad is None or self._warned_bad == version or self.busy:
            return
        if self.journal.incidents.open_for(self.name) is not None:
            return  # the version is bad because this very incident rolled it back
        self._warned_bad = version
        log.warning("target=%s version=%s status=bad-version-redeployed earlier=%r", self.name,
                    version[:12], bad.bad_reason)
        self.outbox.enqueue(None, f"redeploy-{self.name}-{version[:12]}-{time.time():.0f}",
                            f"[rollbackd] {self.name}: bad version {version[:12]} redeployed",
                            f"{version[:12]} was deployed again on {self.name}; it is marked bad: "
                            f"{bad.bad_reason}.\n`rollbackctl known-good list {self.name}` and "
                            "the earlier incident's report have the details.\n")

    def damaged(self, probes: list[str]) -> frozenset[Component]:
        """Whose data these failing probes speak for."""
        kinds = {self.settings[p].kind for p in probes if p in self.settings}
        found = set()
        if kinds & set(REVISION_KINDS):
            found.add(Component.DATABASE)
        if kinds & set(SESSION_KINDS):
            found.add(Component.SESSIONS)
        return frozenset(found)

    async def facts(self, version: str | None, onset: datetime | None,
                    probes: list[str] | None = None) -> Facts:
        # The backup a restore would use carries the writes made since it (what it would lose).
        backups = await with_losses(self.components,
                                    self.journal.backups.entries(self.name, "database"), onset)
        return Facts(
            current_version=version,
            current_revision=self._seen(REVISION_KINDS),
            current_key=self._seen(KEY_KINDS),
            ledger=tuple(self.journal.ledger.entries(self.name)),
            backups=backups,
            key_backups=self.journal.backups.entries(self.name, "key"),
            session_backups=self.journal.backups.entries(self.name, "sessions"),
            damaged=self.damaged(probes or []),
            capabilities=self.capabilities(),
            onset=onset,
        )

    def history(self) -> History:
        now, mono = now_utc(), time.monotonic()  # wall times for the policy, ages kept exact
        return journal_history(self.journal, self.name, tuple(
            now - timedelta(seconds=mono - t) for t in self.transitions))

    async def evaluate(self) -> None:
        if self.busy:
            return
        health = self.target_health()
        found = classify(health)
        passing = all_passing(health)
        # A failure may follow a deploy seconds ago: decide on the version deployed now.
        version = await self._update_ledger(passing, max_age=2.0 if found is None else 0.0)
        incident = self.journal.incidents.open_for(self.name)
        if found is None:
            if passing and incident and incident.state in SELF_CLOSING:
                self._close_recovered(incident)
            return
        if incident is not None:
            self._join(incident, found[1])
            return  # one open incident per target; it already owns these symptoms
        incident_class, probes = found
        evidence = "; ".join(f"{p} {h.last.detail}" for p in probes
                             if (h := self.health[p]).last is not None)
        onset = min((o for p in probes if (o := self.health[p].onset)), default=None)
        decision = decide(incident_class, evidence, await self.facts(version, onset, probes),
                          self.history(), now_utc(), self.policy, self.name)
        if decision.action in (Action.SUPPRESS, Action.IGNORE):
            if self._last_suppressed != decision.reason:  # say it once, not every run
                self._last_suppressed = decision.reason
                log.info("target=%s action=%s reason=%r", self.name, decision.action,
                         decision.reason)
            return
        self._open(decision, onset, version, probes)

    def _close_recovered(self, incident: Incident) -> None:
        acted = bool(self.journal.steps.of(incident.id))
        state = State.RESOLVED if acted else State.TRANSIENT
        self.journal.incidents.update(incident.id, "recovered", "every probe passes again",
                                      state=state.value, closed_at=now_utc())
        self.metrics.recovered(self.name, incident.incident_class,
                               incident.onset_at or incident.detected_at)
        log.info("target=%s incident=%d status=%s", self.name, incident.id, state)

    def _join(self, incident: Incident, probes: list[str]) -> None:
        known = set(incident.evidence.get("failing", []))
        new = [p for p in probes if p not in known]
        if new:
            evidence = {**incident.evidence, "failing": sorted(known | set(new))}
            self.journal.incidents.set_evidence(incident.id, evidence)
            self.journal.incidents.add_event(incident.id, "joined", "new failing probes: " + ", ".join(
                f"{p} ({self.health[p].symptom})" for p in new))

    def _silenced(self) -> bool:
        return active(self.journal.overrides.active(), self.name, now_utc(), OverrideKind.SILENCE) \
            is not None

    def _open(self, decision: Decision, onset: datetime | None, version: str | None,
              probes: list[str]) -> None:
        state = _STATE_OF[decision.action]
        incident_id = self.journal.incidents.open(
            self.name, decision.incident_class, decision.reason, onset,
            {"probes": self.probe_evidence(), "version": version, "failing": sorted(probes)},
            state=state.value,
        )
        self.metrics.incidents.labels(self.name, decision.incident_class).inc()
        self.metrics.detected(self.name, decision.incident_class, onset)
        log.info("target=%s incident=%d class=%s action=%s reason=%r", self.name, incident_id,
                 decision.incident_class, decision.action, decision.reason)
        if decision.plan is not None:
            self.journal.incidents.update(incident_id, "planned", ", ".join(
                decision.plan.step_names), plan=json.dumps(plan_to_dict(decision.plan)))
        if decision.action is Action.EXECUTE and decision.plan:
            self.start(incident_id, decision.plan)
            return
        self._tell(incident_id, decision)

    def _tell(self, incident_id: int, decision: Decision) -> None:
        if self._silenced():
            self.journal.incidents.add_event(incident_id, "silenced", "no mail: silenced by an operator")
            return
        if decision.action is Action.AWAIT_APPROVAL:
            what = "waiting for approval"
            body = (f"{decision.reason}\n\nNothing has been changed. To run the plan:\n\n"
                    f"    rollbackctl approve {incident_id}\n\nTo refuse it:\n\n"
                    f"    rollbackctl deny {incident_id}\n")
        else:
            what = {Action.DRY_RUN: "would act (dry run)", Action.HOLD: "held for a person",
                    Action.ESCALATE: "escalated"}.get(decision.action, str(decision.action))
            body = (f"{decision.reason}\n\nNothing was changed. `rollbackctl show {incident_id}` "
                    "has the evidence.\n")
        if decision.plan is not None:
            body += f"\nPlan ({decision.plan.kind}): {', '.join(decision.plan.step_names)}\n"
        self.outbox.enqueue(incident_id, "opened",
                            f"[rollbackd] {self.name}: {decision.incident_class}, {what}", body)

    def start(self, incident_id: int, plan: Plan) -> None:
        self.task = asyncio.create_task(self.runner.execute(incident_id, plan),
                                        name=f"rollback-{self.name}-{incident_id}")
        # The rollback changes the deployed version: forget the cached one when it ends.
        self.task.add_done_callback(lambda _: setattr(self, "_version", (0.0, None)))

    def stored_plan(self, incident: Incident) -> Plan | None:
        extras = self.journal.incidents.extras(incident.id)
        return plan_from_dict(extras.plan) if extras and extras.plan else None

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


__all__ = ["IncidentClass", "TargetMonitor", "run_probe"]

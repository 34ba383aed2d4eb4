"""One target's monitor: runs its probes, debounces them, keeps the ledger, and asks the
target's incident desk to act on what they show."""

from __future__ import annotations

import asyncio
import dataclasses
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
from daemon.escalation import notices
from daemon.escalation.outbox import Outbox
from daemon.incidents.desk import IncidentDesk, Picture
from daemon.journal.freshness import JournalBackups
from daemon.journal.store import Journal
from daemon.metrics import Metrics
from daemon.rollback.base import Executor
from daemon.rollback.registry import build_executors
from daemon.runner import Runner
from policies.classify import SESSION_KINDS, IncidentClass, all_passing, classify
from policies.debounce import ProbeHealth, debounce
from policies.decision import History
from policies.latency import LatencyState, explain, track
from policies.ledger import LedgerEntry, observe, redeployed_bad
from policies.plans import Capabilities, Component
from policies.settings import PolicySettings
from policies.targets import Facts
from probes.base import Probe, ProbeSettings
from probes.observation import Observation, Status, Symptom
from probes.registry import Tells, build_probe, kinds_that

log = logging.getLogger("rollbackd.monitor")

# Probe kinds whose Observation.version tells the schema revision or the key fingerprint.
REVISION_KINDS = tuple(sorted(kinds_that(Tells.REVISION)))
KEY_KINDS = tuple(sorted(kinds_that(Tells.KEY_FINGERPRINT)))

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
                 fault_hook: Callable[[str], None] | None = None,
                 own_fault: Callable[[Observation], bool] | None = None) -> None:
        self.name = name
        self.own_fault = own_fault
        """selfcheck.SelfCheck.judge: True while the daemon itself is self_degraded."""
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
        self.components: dict[Component, Executor] = build_executors(config, name)
        self.runner = Runner(name, journal, self.components, outbox, metrics, policy,
                             self.verify, self.probe_evidence, reports_dir, fault_hook)
        self.desk = IncidentDesk(self, journal, outbox, metrics, self.runner)
        self.transitions: deque[float] = deque(maxlen=64)
        """time.monotonic() of each healthy <-> failing change: a clock step must not make
        recent flapping old, or old flapping recent."""
        self._was_failing = False
        self._version: tuple[float, str | None] = (0.0, None)
        self._warned_bad: str | None = None
        self.latency: dict[str, LatencyState] = {}  # per probe with a latency baseline

    @property
    def executor(self) -> Executor | None:
        return self.components.get(Component.DEPLOYMENT)

    @property
    def busy(self) -> bool:
        return self.desk.busy

    def forget_transitions_since(self, since: float) -> None:
        """A drill's healthy/failing changes (monotonic `since` on) are not flapping."""
        kept = [t for t in self.transitions if t < since]
        self.transitions.clear()
        self.transitions.extend(kept)

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

    async def component_evidence(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for executor in self.components.values():
            try:
                found[executor.component.value] = await asyncio.wait_for(executor.evidence(), 10)
            except Exception as exc:  # evidence must never keep an incident from opening
                found[executor.component.value] = {"error": f"{type(exc).__name__}: {exc}"}
        return found

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
            if self.own_fault is not None and self.own_fault(obs):
                return  # the daemon's own fault: the target is neither blamed nor evaluated
            self._record(obs)
            try:
                await self.desk.evaluate()
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
        # Known-good needs every probe passing with no incident open against the release: an
        # incident still open (awaiting approval, held, escalated) keeps the clock at zero.
        clean = passing and self.desk.current() is None
        updated = observe(entry, clean, now, self.policy.stable_after,
                          self._seen(REVISION_KINDS), self._seen(KEY_KINDS))
        if updated != entry or version not in entries:
            self.journal.ledger.save(self.name, updated)
            if updated.known_good and not entry.known_good:
                log.info("target=%s version=%s status=known-good", self.name, version[:12])
        self._report_bad_redeploy(list(entries.values()), version)
        return version

    def _report_bad_redeploy(self, entries: list[LedgerEntry], version: str) -> None:
        if version != self._warned_bad:
            self._warned_bad = None  # another version since: the next bad redeploy is news again
        bad = redeployed_bad(entries, version)
        if bad is None or self._warned_bad == version or self.busy:
            return
        if self.desk.current() is not None:
            return  # the version is bad because this very incident rolled it back
        self._warned_bad = version
        log.warning("target=%s version=%s status=bad-version-redeployed earlier=%r", self.name,
                    version[:12], bad.bad_reason)
        self.outbox.send(notices.bad_redeploy(self.name, version, bad.bad_reason, time.time()))

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

    async def picture(self) -> Picture:
        """The debounced picture now, with the ledger brought up to date (the desk asks)."""
        health = self.target_health()
        found = classify(health)
        # A failure may follow a deploy seconds ago: decide on the version deployed now.
        version = await self._update_ledger(all_passing(health),
                                            max_age=2.0 if found is None else 0.0)
        return Picture(found, all_passing(health), version)

    async def confirm(self) -> tuple[Picture, dict[str, str]]:
        """Every probe of the target afresh, at once, each within its own timeout; recorded like
        any run. The picture after them, and what each said (for the incident's timeline)."""
        names = list(self.probes)
        observations = await asyncio.gather(*(run_probe(self.probes[p], self.settings[p].timeout)
                                              for p in names))
        said = {}
        for obs in observations:
            self._record(obs)
            said[obs.probe] = "ok" if obs.ok else f"{obs.status}: {obs.detail}"
        return await self.picture(), said

    def failing_detail(self, probes: list[str]) -> tuple[str, datetime | None]:
        evidence = "; ".join(f"{p} {h.last.detail}" for p in probes
                             if (h := self.health[p]).last is not None)
        onset = min((o for p in probes if (o := self.health[p].onset)), default=None)
        return evidence, onset

    def forget_version(self) -> None:
        self._version = (0.0, None)

    @property
    def version(self) -> str | None:
        """The deployed version as last read (None: not read yet, or no deployment)."""
        return self._version[1]

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

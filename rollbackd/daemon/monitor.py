"""One target's monitor: runs its probes, debounces them, keeps the ledger, and asks the
target's incident desk to act on what they show."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rollbackd.daemon.attention import Attention
from rollbackd.daemon.backup.losses import with_losses
from rollbackd.daemon.clock import now_utc, reconcile
from rollbackd.daemon.config import TargetConfig
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.incidents.changes import Change, ChangeKind, suspects
from rollbackd.daemon.incidents.desk import IncidentDesk, Picture
from rollbackd.daemon.journal.freshness import JournalBackups
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.release_ledger import ReleaseLedger
from rollbackd.daemon.rollback.base import AttachesJournal, Executor
from rollbackd.daemon.rollback.registry import build_executors
from rollbackd.daemon.rollback.release_config import attach as attach_config
from rollbackd.daemon.rollback.schema_facts import gather
from rollbackd.daemon.runner import Runner
from rollbackd.daemon.start_period import StartWatch
from rollbackd.policies.classify import (
    SESSION_KINDS,
    IncidentClass,
    TargetHealth,
    all_passing,
    classify,
)
from rollbackd.policies.debounce import ProbeHealth, debounce
from rollbackd.policies.decision import History
from rollbackd.policies.latency import LatencyState, explain, track
from rollbackd.policies.ledger import LedgerEntry, rollback_target
from rollbackd.policies.plans import Capabilities, Component
from rollbackd.policies.schema import SchemaFacts
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts, deployment_target
from rollbackd.probes.base import Probe, ProbeSettings
from rollbackd.probes.observation import Observation, Status, Symptom
from rollbackd.probes.registry import Tells, build_probe, kinds_that

log = logging.getLogger("rollbackd.monitor")

# Probe kinds whose Observation.version tells the schema revision or the key fingerprint.
REVISION_KINDS = tuple(sorted(kinds_that(Tells.REVISION)))
KEY_KINDS = tuple(sorted(kinds_that(Tells.KEY_FINGERPRINT)))
SCHEMA_TIMEOUT = 10.0
"""Seconds reading the migrations and counting their rows may take before a decision."""

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


def _stopping() -> bool:
    """Shutdown cancelled this run as its answer came in (asyncio.wait_for may swallow that)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def journal_history(journal: Journal, target: str,
                    transitions: tuple[datetime, ...] = ()) -> History:
    """Everything the journal keeps that a decision depends on: it survives restarts."""
    now = now_utc()  # records dated after now (a clock set back across a reboot) count as now
    return History(
        rollbacks=tuple(t for r in journal.incidents.rollback_starts(target)
                        if (t := reconcile(r, now)) is not None),
        breakers={k: b for t, k, b in journal.breakers.all() if t == target},
        transitions=transitions,
        overrides=journal.overrides.active(),
    )


class TargetMonitor:
    def __init__(self, name: str, config: TargetConfig, policy: PolicySettings, journal: Journal,
                 outbox: Outbox, metrics: Metrics, reports_dir: Path,
                 fault_hook: Callable[[str, str], None] | None = None,
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
        self.release_config = attach_config(self.components, name, config.deployment,
                                            journal.release_configs, journal.path.parent)
        """The config files each release carries (deployment.env_files and the like)."""
        self.runner = Runner(name, journal, self.components, outbox, metrics, policy,
                             self.verify, self.probe_evidence, reports_dir, fault_hook)
        users = self.components.get(Component.USERS)
        if isinstance(users, AttachesJournal):  # the users' notice journals each mailed user
            runner = self.runner
            users.attach_journal(journal, outbox, fault_hook,
                                 lambda: runner.guard is None or runner.guard())
        self.desk = IncidentDesk(self, journal, outbox, metrics, self.runner)
        self.transitions: deque[float] = deque(maxlen=64)
        """time.monotonic() of each healthy <-> failing change: a clock step must not make
        recent flapping old, or old flapping recent."""
        self._was_failing = False
        self.ledger = ReleaseLedger(
            name, journal, outbox, lambda: self.executor, self.release_config,
            lambda: self.policy.stable_after, lambda: self.desk.current() is not None,
            lambda: self.busy, lambda: (self._seen(REVISION_KINDS), self._seen(KEY_KINDS)))
        """The known-good ledger of the deployed release (policies/ledger.py decides)."""
        self.latency: dict[str, LatencyState] = {}  # per probe with a latency baseline
        self._in_flight: dict[str, float] = {}
        """time.monotonic() each scheduled probe run still waiting on its target started."""
        self._overrun_said: set[str] = set()  # probes whose overrun was logged this streak
        self._before_overrun: dict[str, ProbeHealth] = {}
        """A probe's health before the first overrun of the run still in flight."""
        self._changes_before: dict[str, tuple[int, bool]] = {}
        """Per probe overrunning now: the flapping record as it was before its first overrun."""
        self._answers: dict[str, Observation] = {}
        """Each probe's last real answer (overruns are not answers)."""
        self._deploying = 0
        self._deployed_at = 0.0
        """time.monotonic() the last drill deploy ended: runs begun before it are not recorded."""
        self._queued = False
        """An evaluation waits for the desk and has not read the picture yet: one that comes
        meanwhile has nothing to add (the queued one will see its observation)."""
        self.attention = Attention(name, outbox)
        """What is mailed to people and acted on by nobody (a probe's own account, a journey)."""
        self.starts = StartWatch(name, getattr(config.deployment, "start_period", 0.0),
                                 self.executor)
        """The start period: app_down is held while a deploy or restart is starting."""

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

    async def what_changed(self, version: str | None) -> list[dict[str, str]]:
        """The suspects: the probe that failed first, and what changed since the known-good
        release (rollbackd/daemon/incidents/changes.py; bounded, never raises)."""
        onsets = [(h.onset, p) for p, h in self.health.items() if h.failing and h.onset]
        first, onset = None, min(onsets)[0] if onsets else None
        if onsets:
            at, probe = min(onsets)
            last = self.health[probe].last
            first = Change(ChangeKind.PROBE, f"{probe} failed first, at {at:%H:%M:%S} UTC"
                           + (f": {last.detail}" if last else ""), "the probes' onsets")
        ledger = self.journal.ledger.entries(self.name)
        return await suspects(self.config, ledger, version, first, executor=self.executor,
                              onset=onset) \
            + await self._config_changes(ledger, version)

    async def _config_changes(self, ledger: list[LedgerEntry], version: str | None
                              ) -> list[dict[str, str]]:
        """The recorded config files' keys that differ now from the known-good release's
        record (names only). Never raises: nothing here may keep an incident from opening."""
        good = rollback_target(ledger, version)
        if self.release_config is None or good is None:
            return []
        try:
            found = await asyncio.wait_for(self.release_config.differences(good.version), 10)
        except Exception as exc:  # noqa: BLE001 - a note instead, never a value
            return [Change(ChangeKind.NOTE, f"recorded config not compared: "
                           f"{type(exc).__name__}", "what changed").to_dict()]
        how = f"compared with the config recorded with known-good {good.version[:12]}; " \
            "values not shown"
        verb = {"changed": "changed in", "removed": "removed from", "added": "added in"}
        return [Change(ChangeKind.ENV, f"{name} {verb[what]} {path}", how).to_dict()
                for path, name, what in found]

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

    def _record(self, obs: Observation, overrun: bool = False) -> None:
        obs = self._judge_latency(obs)
        if not overrun:  # what the target itself answered last (an overrun is no answer)
            self._answers[obs.probe] = obs
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
            started = self._in_flight.get(probe_name)
            if started is not None:
                elapsed = time.monotonic() - started
                # A slot half an interval after the run began is the scheduler catching up
                # (two submissions of one period), not a new period the target let pass.
                if not self._saw_deploy(started) \
                        and elapsed >= self.settings[probe_name].interval / 2:
                    await self._overrun(probe_name, elapsed)
                return
            self._in_flight[probe_name] = started = time.monotonic()
            try:
                obs = await run_probe(self.probes[probe_name], self.settings[probe_name].timeout)
            finally:
                del self._in_flight[probe_name]
            before = self._before_overrun.pop(probe_name, None)
            mark = self._changes_before.pop(probe_name, None)
            if self._saw_deploy(started) or _stopping():
                return
            if self.own_fault is not None and self.own_fault(obs):
                return  # the daemon's own fault: the target is neither blamed nor evaluated
            if obs.ok:
                self._overrun_said.discard(probe_name)
                if before is not None:
                    # Answered within its timeout after all: the overruns were its own
                    # slowness, which the timeout allows. A probe slower than its interval
                    # would otherwise never pass. Their healthy/failing changes go too: they
                    # are not flapping.
                    self.health[probe_name] = before
                    self._forget_changes_since(mark)
            self._record(obs)
            await self._evaluate()
        except asyncio.CancelledError:
            # Only shutdown cancels a probe run, and it has nothing to record; APScheduler would
            # log the cancellation as a crashed job.
            log.debug("target=%s probe=%s status=cancelled", self.name, probe_name)

    def _forget_changes_since(self, mark: tuple[int, bool] | None) -> None:
        if mark is None:
            return
        count, was_failing = mark
        while len(self.transitions) > count:
            self.transitions.pop()
        self._was_failing = was_failing

    @contextlib.contextmanager
    def deploying(self) -> Iterator[None]:
        """A drill puts its fault in place (say, a restart onto a slow version): what the probes
        see meanwhile (the restart's "connection refused") is that deploy, not the fault being
        drilled. Runs that overlap it are not recorded, so the class found does not depend on
        how many probe slots the restart happened to span; the picture goes on from the first
        run begun after it, on top of the healthy one the drill checked before."""
        self._deploying += 1
        try:
            yield
        finally:
            self._deploying -= 1
            self._deployed_at = time.monotonic()

    def _saw_deploy(self, started: float) -> bool:
        return self._deploying > 0 or started <= self._deployed_at

    async def _overrun(self, probe_name: str, elapsed: float) -> None:
        """A slot came due while the probe's previous run still waits on the target: that is a
        failing observation now, not a skipped slot, so a hung target is detected within
        interval x failure_threshold + timeout whatever the timeout. The waiting run is
        recorded as usual when it ends; if it then passes, the overruns are taken back."""
        probe = self.probes[probe_name]
        obs = Observation(probe_name, probe.kind, Status.FAIL,
                          f"overrun: previous run still waiting after {elapsed:.1f}s", elapsed,
                          Symptom.TIMEOUT)
        if self.own_fault is not None and self.own_fault(obs):
            return
        if probe_name not in self._before_overrun:
            self._before_overrun[probe_name] = self.health[probe_name]
            self._changes_before[probe_name] = (len(self.transitions), self._was_failing)
        if probe_name not in self._overrun_said:  # once per failing streak, not every slot
            self._overrun_said.add(probe_name)
            log.warning("target=%s probe=%s status=overrun elapsed=%.1fs timeout=%gs",
                        self.name, probe_name, elapsed, self.settings[probe_name].timeout)
        self._record(obs, overrun=True)
        await self._evaluate()

    async def _evaluate(self) -> None:
        """Ask the desk to act on the picture, unless an evaluation already queued for the desk
        will read it (while the desk confirms, for up to a probe timeout, runs and overruns
        would otherwise pile up behind it)."""
        if self._queued:
            return
        self._queued = True
        try:
            await self.desk.evaluate()
        except Exception:  # the daemon outlives any one bad evaluation
            log.exception("target=%s status=error reason=evaluation crashed", self.name)
        finally:
            self._queued = False

    async def current_version(self, max_age: float = 2.0) -> str | None:
        return await self.ledger.current_version(max_age)

    def probe_account(self) -> dict[str, str]:
        """Login probes failing because of their own account, in plain words (for `status`)."""
        return self.attention.probe_account(self.target_health())

    def journey_steps(self) -> dict[str, str]:
        """Journey probes failing after their log-in -> the failing step (for `status`)."""
        return self.attention.journey_steps(self.target_health())

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
        found = Facts(
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
        return dataclasses.replace(found, schema=await self._schema_facts(found))

    async def _schema_facts(self, f: Facts) -> SchemaFacts | None:
        """What the migrations since the rollback target's revision did (git deployments with
        Alembic scripts in the repository): the decision judges whether the old code can run on
        the schema they left (rollbackd/policies/schema.py)."""
        dep, good = self.config.deployment, deployment_target(f)
        if dep is None or dep.kind != "git" or good is None or f.current_version is None:
            return None
        rev, now = good.alembic_revision, f.current_revision
        if not rev or not now or rev == now:
            return None
        try:
            return await asyncio.wait_for(gather(
                dep.repo, f.current_version, rev, now, self.components.get(Component.DATABASE)),
                SCHEMA_TIMEOUT)
        except TimeoutError:
            return SchemaFacts(rev, now, unreadable=f"reading the migrations took over "
                               f"{SCHEMA_TIMEOUT:g}s")

    def history(self) -> History:
        now, mono = now_utc(), time.monotonic()  # wall times for the policy, ages kept exact
        return journal_history(self.journal, self.name, tuple(
            now - timedelta(seconds=mono - t) for t in self.transitions))

    async def picture(self) -> Picture:
        """The debounced picture now, with the ledger brought up to date (the desk asks)."""
        self._queued = False  # from here on, a new observation needs an evaluation of its own
        health = self.target_health()
        found = classify(health)
        self.attention.report(health)
        # A failure may follow a deploy seconds ago: decide on the version deployed now.
        version = await self.ledger.update(self._stability(health),
                                            max_age=2.0 if found is None else 0.0)
        self.starts.saw(version, all_passing(health))
        found = await self.starts.judge(found)
        return Picture(found, all_passing(health), version)

    def _stability(self, health: TargetHealth) -> bool | None:
        """What this evaluation says of the release's stability: True all passing, False not,
        None undecided. A probe passing until its run outlasted its interval is undecided: the
        run may still pass within its timeout (the overruns are then taken back), and a busy
        machine must not restart the known-good clock on answers it has not had yet."""
        if all_passing(health):
            return True
        undecided = {p for p, before in self._before_overrun.items() if before.passing}
        if undecided and all(h.passing or p in undecided for p, (_, h) in health.items()):
            return None
        return False

    async def confirm(self) -> tuple[Picture, dict[str, str]]:
        """Every probe of the target afresh, at once, each within its own timeout; recorded like
        any run. The picture after them, and what each said (for the incident's timeline).

        A probe failing past its threshold on an answer younger than its interval is fresh
        already: its streak is the evidence, and running it again would only add a timeout to
        the detection of a hung target. Every other probe runs: the ones that pass, the ones
        below their threshold, one failing on overruns alone, and any whose last answer is old
        (an approval hours later)."""
        now = datetime.now(UTC)
        said: dict[str, str] = {}
        names = []
        for p, h in self.health.items():
            fresh = h.last is not None and \
                (now - h.last.at).total_seconds() < self.settings[p].interval
            # Failing on overruns alone, its real answer is still pending: ask again (a slow
            # answer within the timeout is perf_degraded's, not app_down's).
            overruns = p in self._before_overrun
            if h.failing and fresh and not overruns and h.last is not None:
                said[p] = f"{h.last.status}: {h.last.detail} (failing, answered just now)"
            else:
                names.append(p)
        observations = await asyncio.gather(*(run_probe(self.probes[p], self.settings[p].timeout)
                                              for p in names))
        kept = [h.last for p, h in self.health.items() if p not in names and h.last is not None]
        own = [o for o in (*observations, *kept)
               if self.own_fault is not None and self.own_fault(o)]
        if own:  # the daemon itself is short of something: no picture stands, nothing acts
            said.update({o.probe: f"not counted: rollbackd is self_degraded ({o.detail})"
                         for o in own})
            return Picture(None, False, None), said
        for obs in observations:
            self._record(obs)
            said[obs.probe] = "ok" if obs.ok else f"{obs.status}: {obs.detail}"
        return await self.picture(), said

    def failing_detail(self, probes: list[str]) -> tuple[str, datetime | None]:
        # The target's own last failing answer is the evidence; an overrun since only says the
        # next answer is late.
        seen = {p: a if (a := self._answers.get(p)) is not None and not a.ok
                else self.health[p].last for p in probes}
        evidence = "; ".join(f"{p} {obs.detail}" for p, obs in seen.items() if obs is not None)
        if self.starts.note:  # the start period held these failures, or was cut short
            evidence += f" ({self.starts.note})"
        onset = min((o for p in probes if (o := self.health[p].onset)), default=None)
        return evidence, onset

    def forget_version(self) -> None:
        self.ledger.forget_version()

    @property
    def version(self) -> str | None:
        """The deployed version as last read (None: not read yet, or no deployment)."""
        return self.ledger.version

    async def verify(self, timeout: float) -> tuple[bool, str]:
        """Run every probe until each passes its success threshold in a row, within timeout."""
        needed = {p: s.success_threshold for p, s in self.settings.items()}
        streak = dict.fromkeys(needed, 0)
        pause = min(1.0, min(s.interval for s in self.settings.values()))
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        # The user-acceptance journey goes last, as in the runbook: on a target the other
        # probes already pass.
        order = sorted(self.probes.items(), key=lambda item: item[1].kind == "journey")
        while time.monotonic() < deadline:
            for p, probe in order:
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

"""The daemon's drills: started by `rollbackctl drill`, the schedule or the demo; one at a time
per target; each scenario in turn; a report after each; metrics; the overdue rule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from rollbackd.daemon.drills.procedure import DrillContext, run_scenario
from rollbackd.daemon.drills.record import INTERRUPTED, RUNNING, DrillRun, ScenarioRun, now_utc
from rollbackd.daemon.drills.report import write_report
from rollbackd.daemon.drills.schedule import due_since, is_overdue
from rollbackd.daemon.drills.settings import SCENARIO_NAMES, DrillSettings
from rollbackd.daemon.drills.store import DrillStore
from rollbackd.daemon.metrics.drills import DrillMetrics

if TYPE_CHECKING:
    from rollbackd.daemon.config import Config, TargetConfig
    from rollbackd.daemon.journal.store import Journal
    from rollbackd.daemon.metrics import Metrics
    from rollbackd.daemon.monitor import TargetMonitor

log = logging.getLogger("rollbackd.drills")


class DrillHost(Protocol):
    """What drills may see of the daemon: the live config, journal, metrics and monitors."""

    @property
    def config(self) -> Config: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def monitors(self) -> Mapping[str, TargetMonitor]: ...


class DrillRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DrillService:
    def __init__(self, daemon: DrillHost, clock: Callable[[], datetime] = now_utc) -> None:
        self.d = daemon
        state_dir = daemon.config.daemon.state_dir
        self.store = DrillStore(state_dir)
        self.reports_dir = state_dir / "reports"
        self.metrics = DrillMetrics(daemon.metrics.registry, self.status)
        self.runs: dict[int, DrillRun] = {}
        """Drills of this process, running or finished (the older ones: their reports)."""
        self._tasks: dict[str, asyncio.Task[DrillRun]] = {}
        self.clock = clock
        """The time status() judges overdue by (tests move it months ahead)."""
        self.status()  # records since when each target has its schedule (the overdue rule)

    # -- what may run ---------------------------------------------------------------------

    def _target(self, target: str) -> tuple[TargetConfig, DrillSettings]:
        cfg = self.d.config.targets.get(target)
        if cfg is None:
            raise DrillRefused("not_found", f"no target {target!r} (have: "
                               f"{', '.join(self.d.config.targets)})")
        if not cfg.staging:
            raise DrillRefused("not_staging", (
                f"refused: {target} is not marked staging. A drill breaks its target on purpose "
                f"(it deploys a broken version, corrupts the database, replaces the key), so "
                f"drills run only on targets with `staging = true` in [targets.{target}]"))
        if cfg.drills is None:
            raise DrillRefused("not_configured", (
                f"{target} has no drills configured: add [targets.{target}.drills] with an "
                f"injector per scenario ([targets.{target}.drills.injectors.app_down] ...)"))
        return cfg, cfg.drills

    def _scenarios(self, target: str, settings: DrillSettings,
                   asked: Sequence[str] | None) -> list[str]:
        wanted = list(dict.fromkeys(asked)) if asked else settings.planned()
        unknown = [s for s in wanted if s not in SCENARIO_NAMES]
        if unknown:
            raise DrillRefused("bad_args", f"unknown scenario {unknown[0]!r}: one of "
                               f"{', '.join(SCENARIO_NAMES)}")
        missing = [s for s in wanted if s not in settings.injectors]
        if missing:
            raise DrillRefused("not_configured", (
                f"no injector is configured for {missing[0]} on {target}: add "
                f"[targets.{target}.drills.injectors.{missing[0]}] with argv or builtin"))
        if not wanted:
            raise DrillRefused("not_configured", f"{target} has no injector configured")
        return wanted

    # -- running ----------------------------------------------------------------------------

    def start(self, target: str, scenarios: Sequence[str] | None = None,
              trigger: str = "rollbackctl") -> DrillRun:
        """Start a drill now (refused with DrillRefused); it runs as a task of its own."""
        cfg, settings = self._target(target)
        wanted = self._scenarios(target, settings, scenarios)
        running = self._tasks.get(target)
        if running is not None and not running.done():
            busy = next(r.id for r in self.runs.values() if r.target == target and not r.done)
            raise DrillRefused("busy", f"drill {busy} is running on {target}")
        run = DrillRun(self.store.next_id(), target, trigger, [ScenarioRun(s) for s in wanted])
        self.runs[run.id] = run
        write_report(self.reports_dir, run)
        self._tasks[target] = asyncio.create_task(self._run(run, cfg, settings),
                                                  name=f"drill-{target}-{run.id}")
        log.info("drill=%d target=%s scenarios=%s trigger=%r status=started", run.id, target,
                 ",".join(wanted), trigger)
        return run

    async def run(self, target: str, scenarios: Sequence[str] | None = None,
                  trigger: str = "rollbackctl") -> DrillRun:
        """Start a drill and wait for it to end."""
        self.start(target, scenarios, trigger)
        return await self._tasks[target]

    def _monitor(self, target: str) -> TargetMonitor | None:
        return self.d.monitors.get(target)

    async def _run(self, run: DrillRun, cfg: TargetConfig, settings: DrillSettings) -> DrillRun:
        ctx = DrillContext(run, self.d.journal, lambda: self._monitor(run.target), cfg, settings)
        interrupted = False
        try:
            for s in run.scenarios:
                try:
                    await run_scenario(ctx, s)
                except asyncio.CancelledError:
                    s.result, s.reason = INTERRUPTED, "the daemon stopped during the drill"
                    raise
                except Exception as exc:  # a drill bug must not take the daemon down
                    log.exception("drill=%d scenario=%s status=crashed", run.id, s.scenario)
                    s.result, s.reason = "failed", f"the drill crashed: {type(exc).__name__}: {exc}"
                self.metrics.observe(run.target, s.scenario, s.timings, s.result)
                log.info("drill=%d target=%s scenario=%s result=%s reason=%r timings=%s",
                         run.id, run.target, s.scenario, s.result, s.reason, s.timings)
                write_report(self.reports_dir, run)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            run.finish(interrupted)
            write_report(self.reports_dir, run)
            self.store.finished(run)
            log.info("drill=%d target=%s status=%s report=%s", run.id, run.target, run.state,
                     run.report)
        return run

    async def scheduled(self, target: str) -> None:
        """The schedule's job: every planned scenario; a refusal is recorded, never raised."""
        try:
            run = self.start(target, None, "schedule")
        except DrillRefused as exc:
            log.warning("drill target=%s trigger=schedule status=refused reason=%r", target,
                        str(exc))
            return
        await self._tasks[run.target]

    async def stop(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what is known --------------------------------------------------------------------

    def get(self, drill_id: int) -> dict[str, Any] | None:
        run = self.runs.get(drill_id)
        return run.to_dict() if run is not None else self.store.load(drill_id)

    def status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Each staging target with drills: schedule, last success, next due, overdue."""
        now = now or self.clock()
        out = []
        for target, cfg in list(self.d.config.targets.items()):
            settings = cfg.drills
            if settings is None or not cfg.staging:
                continue
            since = self.store.seen(target, now)
            last = self.store.last_success(target)
            running = next((r.id for r in self.runs.values()
                            if r.target == target and r.state == RUNNING), None)
            out.append({"target": target, "schedule": settings.schedule,
                        "timezone": settings.timezone, "scheduled": settings.scheduled,
                        "since": since, "last_success": last,
                        "next_due": due_since(settings, since, last),
                        "overdue": is_overdue(settings, since, last, now), "running": running})
        return out

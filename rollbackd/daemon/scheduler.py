"""Probe scheduling on APScheduler 3: each probe on its interval from a stable phase, started by
the tick of its phase slot (rollbackd/daemon/ticks.py); a slot that finds the previous run still waiting
is an overrun (TargetMonitor.run_scheduled), never dropped."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from rollbackd.daemon.backup.schedule import attach_backups
from rollbackd.daemon.drills.schedule import attach_drills
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.ticks import EXECUTOR, TickExecutor, Ticks

log = logging.getLogger("rollbackd.scheduler")

Wrap = Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]
"""Wraps each scheduled function of a target (the cluster's fence: runs only while owned)."""

CLOCK_STEP = 2.0
"""Seconds the wall clock may move against the monotonic clock before it counts as stepped."""


def phase(job_id: str, interval: float) -> float:
    """A stable offset within the interval for a probe's first run.

    Probes that all start "now" keep firing in phase, hundreds in the same instant every
    interval; spreading first runs over the interval keeps the scheduler's lag flat. Stable
    (from the id, not random) so a restart keeps the same rhythm. No jitter on top: APScheduler 3
    adds it to every gap (the next run is due at the previous jittered run + interval), so
    probes ran up to 10% slower than configured and a hung target could take 10% longer than
    interval x failure_threshold + timeout to detect.
    """
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * min(interval, 5.0)


class ProbeScheduler:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_executor(TickExecutor(), EXECUTOR)
        self.ticks = Ticks(self.scheduler, metrics.scheduler_ran)
        self.drills: Callable[[str], Awaitable[Any]] | None = None
        """Runs a target's scheduled drill (the daemon's DrillService); None: no drills."""
        self.wall: Callable[[], float] = time.time
        self.clock_check = 1.0
        self._clock_watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.scheduler.start()
        self._clock_watch = asyncio.get_running_loop().create_task(self._watch_clock(),
                                                                   name="clock-watch")

    async def _watch_clock(self) -> None:
        """APScheduler plans in wall time: stepped back an hour, it would run no probe for an
        hour; stepped forward, it would work through every run it "missed". A step shows as a
        change of wall minus monotonic time; then every interval job is brought back within
        one interval of now (cron jobs, the drills, keep their wall times)."""
        offset = self.wall() - time.monotonic()
        while True:
            await asyncio.sleep(self.clock_check)
            now_offset = self.wall() - time.monotonic()
            step, offset = now_offset - offset, now_offset
            if abs(step) < CLOCK_STEP:
                continue
            log.warning("clock status=stepped by=%+.1fs action=probe schedule kept", step)
            now = datetime.fromtimestamp(self.wall(), UTC)
            for job in self.scheduler.get_jobs():
                if isinstance(job.trigger, IntervalTrigger) and job.next_run_time is not None:
                    due = min(max(job.next_run_time, now), now + job.trigger.interval)
                    if due != job.next_run_time:
                        job.modify(next_run_time=due)
            self.scheduler.wakeup()

    def schedule(self, monitor: TargetMonitor, wrap: Wrap | None = None) -> list[str]:
        """The target's probes (in ticks), backups and drills; each function wrapped by `wrap`.
        The ids of what was scheduled, for unschedule()."""
        ids = []
        for name, settings in monitor.settings.items():
            key = f"{monitor.name}/{name}"
            run = monitor.run_scheduled
            self.ticks.add(key, wrap(run) if wrap else run, (name,), settings.interval,
                           phase(key, settings.interval))
            ids.append(key)
        before = {job.id for job in self.scheduler.get_jobs()}
        self.schedule_backups(monitor)
        self.schedule_drills(monitor)
        for job in self.scheduler.get_jobs():
            if job.id not in before and job.id not in self.ticks.slots:
                if wrap is not None:
                    job.modify(func=wrap(job.func))
                ids.append(job.id)
        return ids

    def unschedule(self, ids: Iterable[str]) -> None:
        for key in ids:
            if not self.ticks.remove(key):
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(key)

    def schedule_drills(self, monitor: TargetMonitor) -> None:
        """A staging target's drills on their cron schedule ([targets.<name>.drills])."""
        settings = monitor.config.drills
        if self.drills is None or settings is None or not monitor.config.staging \
                or not settings.scheduled:
            return
        attach_drills(self.scheduler, monitor.name, settings, self.drills)

    def schedule_backups(self, monitor: TargetMonitor) -> None:
        """The target's backups on their interval; first now unless a recent one is verified."""
        backups = attach_backups(
            monitor.name, monitor.config.backups, monitor.journal, monitor.components,
            lambda: monitor.busy, self.metrics,
            monitor.outbox.send)
        if backups is None:
            return
        self.scheduler.add_job(
            backups.run, "interval", id=f"{monitor.name}/backups",
            name=f"backups {monitor.name}", seconds=backups.interval,
            next_run_time=backups.first_run(), max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(backups.interval)), replace_existing=True,
        )
        if backups.testers:  # its own job: a long test restore never holds up a backup
            self.scheduler.add_job(
                backups.test_restores, "interval", id=f"{monitor.name}/restore-test",
                name=f"restore test {monitor.name}", seconds=backups.test_check,
                next_run_time=backups.first_test(), max_instances=1, coalesce=True,
                misfire_grace_time=max(1, int(backups.test_check)), replace_existing=True,
            )

    def unschedule_all(self) -> None:
        self.ticks.clear()
        self.scheduler.remove_all_jobs()

    def shutdown(self) -> None:
        if self._clock_watch is not None:
            self._clock_watch.cancel()
        self.ticks.cancel()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

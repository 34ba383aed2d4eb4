"""Probe runs in ticks: one APScheduler job per interval and phase slot starts the probes of
that slot, in small groups by phase, each run in a task of its own.

A job per probe cost APScheduler's bookkeeping per run (the job store, the trigger, events, an
executor task), and spread alone over the interval each run found the CPU's caches cold from
whatever ran in between (on a busy host, that doubled the CPU of an HTTPS probe run;
bench/peer.py). Probes whose phases fall in the same TICK now start together: the job count is
the number of slots, not of probes, and a run's start is at most TICK later than its own phase
would have put it (the interval between two runs of a probe is unchanged, so is the detection
bound). A probe run is a task of its own: a slow one holds up no other, and one still waiting
when its next slot comes is TargetMonitor.run_scheduled's overrun, as before.

A slot's probes start in groups of at most GROUP, in phase order, each group at the phase of
its first probe within the slot (a timer on the event loop, not a job of APScheduler's). Started
all at once, the last of a crowded slot waited for every other's start (at 5,000 probes every
5 s, 250 runs due at one instant); most of the lag there was the garbage collector's pauses
(app.GC_THRESHOLDS), and groups of 16 measured 32 ms lag p99 against 45 ms for groups of 64 at
the same CPU (bench/peer.py). A group keeps the warm caches of running together; spread over
the slot, the groups of a crowded slot each find the loop free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("rollbackd.scheduler")

TICK = 0.25
"""Seconds between two phase slots of one interval."""
GROUP = 16
"""Most probe runs of a slot started together."""
EXECUTOR = "ticks"
"""The alias of TickExecutor in the scheduler."""


class TickExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs a tick where APScheduler finds it due: on the event loop, within the scheduler's
    own call, handed its due time. A tick only starts tasks, so it needs neither a task of its
    own (AsyncIOExecutor's, one more loop pass before any probe starts) nor a thread."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        due = run_times[-1]
        late = (datetime.now(UTC) - due).total_seconds()
        if job.misfire_grace_time is not None and late > job.misfire_grace_time:
            log.warning("tick=%s status=missed late=%.1fs", job.id, late)
        else:
            try:
                job.func(*job.args, due=due)
            except Exception:  # the scheduler goes on; the next tick tries again
                log.exception("tick=%s status=crashed", job.id)
        # After submit_job has counted this instance (it counts once we return).
        asyncio.get_running_loop().call_soon(self._run_job_success, job.id, [])


@dataclass(frozen=True)
class Entry:
    key: str
    """"target/probe": the entry's id."""
    run: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    tick: str
    """The id of the tick job that starts it."""
    at: float = 0.0
    """Seconds after its slot's start that its phase falls."""


class Ticks:
    """The probe entries and the tick jobs that start them."""

    def __init__(self, scheduler: AsyncIOScheduler, started: Callable[[float], None]) -> None:
        self.scheduler = scheduler
        self.started = started
        """Called with each run's lag (its start minus its slot's due time), in seconds."""
        self.entries: dict[str, Entry] = {}
        self.slots: dict[str, dict[str, Entry]] = {}
        self.running: set[asyncio.Task[None]] = set()
        self._groups: dict[str, list[list[Entry]]] = {}
        """Each slot's entries in phase order, cut into groups (made again after a change)."""
        self._timers: set[asyncio.TimerHandle] = set()

    def add(self, key: str, run: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
            interval: float, offset: float) -> None:
        """Run `run(*args)` every `interval` seconds, in the slot of `offset` (0 <= offset)."""
        self.remove(key)
        slot = int(offset / TICK)
        tick = f"probes/{interval:g}s/{slot}"
        if tick not in self.slots:
            self.slots[tick] = {}
            self.scheduler.add_job(
                self._tick, "interval", args=[tick], id=tick, executor=EXECUTOR,
                name=f"probes every {interval:g}s, slot {slot}", seconds=interval,
                next_run_time=datetime.now(UTC) + timedelta(seconds=slot * TICK),
                max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval)),
                replace_existing=True)
        entry = Entry(key, run, args, tick, offset - slot * TICK)
        self.entries[key] = entry
        self.slots[tick][key] = entry
        self._groups.pop(tick, None)

    def remove(self, key: str) -> bool:
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        slot = self.slots[entry.tick]
        del slot[key]
        self._groups.pop(entry.tick, None)
        if not slot:
            del self.slots[entry.tick]
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(entry.tick)
        return True

    def clear(self) -> None:
        """Every entry and tick job goes; runs in flight finish (as a reload wants)."""
        for key in list(self.entries):
            self.remove(key)

    def cancel(self) -> None:
        """Shutdown: groups not yet started never start; runs in flight are cancelled
        (TargetMonitor.run_scheduled expects it)."""
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()
        for task in list(self.running):
            task.cancel()

    def groups(self, tick: str) -> list[list[Entry]]:
        """The slot's entries in phase order, in groups of at most GROUP."""
        groups = self._groups.get(tick)
        if groups is None:
            ordered = sorted(self.slots.get(tick, {}).values(), key=lambda e: (e.at, e.key))
            groups = [ordered[i:i + GROUP] for i in range(0, len(ordered), GROUP)]
            self._groups[tick] = groups
        return groups

    def _tick(self, tick: str, due: datetime | None = None) -> None:
        """Starts the slot's first group now and the others at their phase (TickExecutor hands
        in the due time)."""
        due = due or datetime.now(UTC)
        loop = asyncio.get_running_loop()
        late = (datetime.now(UTC) - due).total_seconds()
        for group in self.groups(tick):
            wait = group[0].at - late
            group_due = due + timedelta(seconds=group[0].at)
            if wait <= 0:
                self._start(group, group_due)
            else:
                self._later(loop, wait, group, group_due)

    def _later(self, loop: asyncio.AbstractEventLoop, wait: float, group: list[Entry],
               due: datetime) -> None:
        timer: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._timers.discard(timer[0])
            self._start(group, due)

        timer.append(loop.call_later(wait, fire))
        self._timers.add(timer[0])

    def _start(self, group: list[Entry], due: datetime) -> None:
        loop = asyncio.get_running_loop()
        for entry in group:
            if self.entries.get(entry.key) is not entry:
                continue  # removed (or replaced) since its slot's tick
            task = loop.create_task(self._run(entry, due))
            self.running.add(task)
            task.add_done_callback(self._done)

    async def _run(self, entry: Entry, due: datetime) -> None:
        self.started(max(0.0, (datetime.now(UTC) - due).total_seconds()))
        await entry.run(*entry.args)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("probe run status=crashed reason=%r", exc, exc_info=exc)

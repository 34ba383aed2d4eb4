"""Probe runs in ticks (rollbackd/daemon/ticks.py): probes of one phase slot start together, each in a task
of its own, with the lag of its own start; a slot's job goes with its last probe; the cluster's
wrap reaches every probe run and unschedule() removes exactly what schedule() returned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.daemon.ticks import TICK


def fake_monitor(name: str, probes: dict[str, float],
                 run: Callable[[str], Awaitable[None]]) -> Any:
    """What ProbeScheduler.schedule reads of a TargetMonitor's probes."""
    return SimpleNamespace(name=name, run_scheduled=run,
                           settings={p: SimpleNamespace(interval=i) for p, i in probes.items()})


def scheduler() -> ProbeScheduler:
    sched = ProbeScheduler(Metrics(CollectorRegistry()))
    sched.schedule_backups = lambda monitor: None  # type: ignore[method-assign]
    sched.schedule_drills = lambda monitor: None  # type: ignore[method-assign]
    return sched


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within:g}s"
        await asyncio.sleep(0.01)


async def test_probes_of_a_slot_start_together_and_a_hung_one_holds_up_no_other() -> None:
    sched = scheduler()
    started: dict[str, list[float]] = {}
    release = asyncio.Event()

    def runner(target: str) -> Callable[[str], Awaitable[None]]:
        async def run(probe: str) -> None:
            started.setdefault(f"{target}/{probe}", []).append(time.monotonic())
            if target == "hung":
                await release.wait()  # never answers within the test
        return run

    # Interval 0.2 s: every phase falls in the first slot, so all of them share one tick.
    for target in ("hung", "a", "b"):
        sched.schedule(fake_monitor(target, {"health": 0.2}, runner(target)))
    assert set(sched.ticks.entries) == {"hung/health", "a/health", "b/health"}
    assert [j.id for j in sched.scheduler.get_jobs()] == ["probes/0.2s/0"]
    sched.start()
    try:
        await wait_until(lambda: len(started.get("a/health", [])) >= 3, within=5)
        first = [started[k][0] for k in ("hung/health", "a/health", "b/health")]
        assert max(first) - min(first) < TICK  # one tick started them all
        # The hung probe's first run never ended, and the others went on at their interval.
        assert len(started["b/health"]) >= 3
        assert len(sched.ticks.running) >= 1
    finally:
        sched.shutdown()
        release.set()
    await asyncio.sleep(0)
    lags = sched.metrics.registry.get_sample_value("rollbackd_scheduler_lag_seconds_count")
    assert lags is not None and lags >= 9  # a lag per probe run, not per tick


async def test_unschedule_removes_what_schedule_returned_and_an_empty_slot_goes() -> None:
    sched = scheduler()

    async def run(probe: str) -> None:
        return None

    ids_a = sched.schedule(fake_monitor("a", {"health": 0.2, "login": 0.2}, run))
    ids_b = sched.schedule(fake_monitor("b", {"health": 0.2}, run))
    assert (ids_a, ids_b) == (["a/health", "a/login"], ["b/health"])
    sched.unschedule(ids_a)
    assert set(sched.ticks.entries) == {"b/health"}
    assert [j.id for j in sched.scheduler.get_jobs()] == ["probes/0.2s/0"]
    sched.unschedule(ids_b)
    assert sched.ticks.entries == {} and sched.scheduler.get_jobs() == []


async def test_the_wrap_reaches_every_probe_run() -> None:
    """The cluster's fence: a wrapped target's runs go through its wrapper, others do not."""
    sched = scheduler()
    seen: list[tuple[str, str]] = []

    def wrap(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def fenced(*args: Any) -> None:
            seen.append(("fenced", *args))
            await func(*args)
        return fenced

    async def run(probe: str) -> None:
        seen.append(("ran", probe))

    sched.schedule(fake_monitor("owned", {"health": 0.2}, run), wrap=wrap)
    sched.start()
    try:
        await wait_until(lambda: len(seen) >= 4, within=5)
    finally:
        sched.shutdown()
    assert seen[:4] == [("fenced", "health"), ("ran", "health")] * 2

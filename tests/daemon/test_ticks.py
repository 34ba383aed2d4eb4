"""Probe runs in ticks (rollbackd/daemon/ticks.py): probes of one phase slot start together, each in a task
of its own, with the lag of its own start; a slot's job goes with its last probe; the cluster's
wrap reaches every probe run and unschedule() removes exactly what schedule() returned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
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


async def test_a_crowded_slot_starts_in_groups_at_their_phases() -> None:
    """40 probes in one slot: the first GROUP start at the tick, the others wait on a timer for
    the phase of their group's first probe; one removed before its group's timer does not run,
    and shutdown cancels the groups not yet started."""
    from rollbackd.daemon.ticks import GROUP, Ticks

    sched = scheduler()
    ticks: Ticks = sched.ticks
    started: list[str] = []

    async def run(probe: str) -> None:
        started.append(probe)

    # Phases 0.005 s apart, given in reverse: the groups follow the phase, not the order added.
    for i in reversed(range(40)):
        ticks.add(f"t{i:02d}/health", run, (f"t{i:02d}",), 5.0, i * 0.005)
    assert list(ticks.slots) == ["probes/5s/0"]
    assert [len(g) for g in ticks.groups("probes/5s/0")] == [GROUP, GROUP, 40 - 2 * GROUP]

    loop = asyncio.get_running_loop()
    timers: list[tuple[float, Callable[[], None], asyncio.TimerHandle]] = []
    real_call_later = loop.call_later

    def recorded(delay: float, callback: Callable[[], None], *args: Any) -> asyncio.TimerHandle:
        handle = real_call_later(3600, callback)  # never fires by itself within the test
        timers.append((delay, callback, handle))
        return handle

    loop.call_later = recorded  # type: ignore[method-assign]
    try:
        from datetime import UTC, datetime
        ticks._tick("probes/5s/0", due=datetime.now(UTC))
    finally:
        loop.call_later = real_call_later  # type: ignore[method-assign]
    for _ in range(3):
        await asyncio.sleep(0)
    assert started == [f"t{i:02d}" for i in range(GROUP)]
    # One timer per later group, set for the phase of its first probe less the tick's lateness.
    assert len(timers) == 2
    assert timers[0][0] <= GROUP * 0.005 and timers[1][0] <= 2 * GROUP * 0.005
    assert timers[1][0] - timers[0][0] == pytest.approx(GROUP * 0.005)

    ticks.remove(f"t{GROUP + 1:02d}/health")
    timers[0][1]()  # the second group's time comes
    for _ in range(3):
        await asyncio.sleep(0)
    assert started[GROUP:] == [f"t{i:02d}" for i in range(GROUP, 2 * GROUP) if i != GROUP + 1]

    sched.shutdown()
    assert timers[1][2].cancelled()  # the third group never starts
    assert len(started) == 2 * GROUP - 1

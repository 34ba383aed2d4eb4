"""One scenario of a drill, from the injected fault to the verified target, timed and checked.

1. Refuse unless the daemon would repair the fault now (preflight) and the target is healthy.
2. Record the target's state (version, revision, key, row counts, login), take fresh verified
   backups where the repair restores one.
3. Onset: inject (what the probes see while the injector deploys is not recorded: a restart's
   refused connections are not the fault being drilled). Then wait, watching the journal, for
   the incident (detection), approve its plan if it waits for a person and the drill may, and
   wait for it to close.
4. Passed when the incident is of the scenario's class, resolved, and the target is exactly as
   healthy as before; then the injector tidies up (a branch, a migration file).

The drill's incident is a real one (journal, report, mails). Once closed it is marked as not
automatic, like a manual rollback, and its healthy/failing changes are forgotten: drills do not
use up the target's rollback limit or cooldown, nor count as flapping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from rollbackd.daemon.backup.base import BackupFailed
from rollbackd.daemon.backup.schedule import BacksUp
from rollbackd.daemon.drills.health import Snapshot, snapshot
from rollbackd.daemon.drills.injectors import DrillError, InjectContext, Injector, build_injector
from rollbackd.daemon.drills.preflight import gate, not_known_good, not_ready, unfit
from rollbackd.daemon.drills.record import FAILED, PASSED, REFUSED, RUNNING, DrillRun, ScenarioRun, now_utc
from rollbackd.daemon.drills.scenarios import SCENARIOS
from rollbackd.daemon.journal import Incident, Journal
from rollbackd.daemon.refusal import Refused
from rollbackd.daemon.rollback.base import StepFailed

if TYPE_CHECKING:
    from rollbackd.daemon.config import TargetConfig
    from rollbackd.daemon.drills.settings import DrillSettings
    from rollbackd.daemon.monitor import TargetMonitor

log = logging.getLogger("rollbackd.drills")
POLL = 0.05


@dataclass
class DrillContext:
    run: DrillRun
    journal: Journal
    monitor: Callable[[], TargetMonitor | None]
    """The target's monitor now (a reload replaces it)."""
    config: TargetConfig
    settings: DrillSettings


def _after(onset: datetime, at: datetime | None) -> float | None:
    return round((at - onset).total_seconds(), 3) if at else None


async def _fresh_backups(m: TargetMonitor, kinds: tuple[str, ...], drill_id: int) -> list[str]:
    """A verified backup of each kind taken now: the restore a drill causes must lose nothing."""
    taken: list[str] = []
    for executor in m.components.values():
        if not isinstance(executor, BacksUp):
            continue
        for b in executor.backupers():
            if b.kind not in kinds:
                continue
            try:
                store = getattr(executor, "store")  # noqa: B009 - a property that may raise
                stored = await store.take(b, reason=f"drill {drill_id}")
            except (BackupFailed, StepFailed) as exc:
                raise DrillError(f"the fresh {b.kind} backup failed: {exc}") from None
            if not stored.verified:
                raise DrillError(f"the fresh {b.kind} backup {stored.describe()}")
            taken.append(f"{b.kind} {stored.describe()}")
    return taken


def _newest_id(journal: Journal) -> int:
    found = journal.incidents.recent(1)
    return found[0].id if found else 0


def _opened(journal: Journal, target: str, after_id: int) -> Incident | None:
    return next((i for i in reversed(journal.incidents.recent(50))
                 if i.id > after_id and i.target == target), None)


async def _approve(ctx: DrillContext, m: TargetMonitor, inc: Incident) -> bool:
    """Run the waiting plan as `rollbackctl approve` would; the timeline says who approved."""
    try:
        await m.desk.approve(inc.id, f"drill {ctx.run.id} (drills.approve = true)")
    except Refused as exc:
        log.info("drill=%d incident=%d approve=refused reason=%s", ctx.run.id, inc.id, exc)
        return False
    return True


async def _preflight(ctx: DrillContext, s: ScenarioRun, m: TargetMonitor) -> Injector | None:
    scenario = SCENARIOS[s.scenario]
    settings = {str(k): v for k, v in ctx.settings.injectors.items()}.get(s.scenario)
    if settings is None:
        s.reason = (f"no injector is configured for {s.scenario}: add "
                    f"[targets.{ctx.run.target}.drills.injectors.{s.scenario}]")
        return None
    s.reason = unfit(m, scenario) or not_ready(m) or await not_known_good(m) \
        or gate(m, scenario, now_utc()) or ""
    if s.reason:
        return None
    try:
        return build_injector(InjectContext(ctx.run.target, s.scenario, ctx.run.id, ctx.config,
                                            settings))
    except DrillError as exc:
        s.reason = str(exc)
        return None


async def run_scenario(ctx: DrillContext, s: ScenarioRun) -> None:
    """Run one scenario; its outcome, timings and checks are written into `s`."""
    m = ctx.monitor()
    if m is None:
        s.result, s.reason = REFUSED, f"{ctx.run.target} is no longer configured"
        return
    injector = await _preflight(ctx, s, m)
    if injector is None:
        s.result = REFUSED
        return
    before = await snapshot(m)
    s.before = before.to_dict()
    if not before.healthy:
        s.result, s.reason = REFUSED, "not healthy before the drill: " + "; ".join(
            f"{p} {d}" for p, d in before.probes.items() if d != "ok")
        return
    try:
        s.backups = await _fresh_backups(m, SCENARIOS[s.scenario].backups, ctx.run.id)
    except DrillError as exc:
        s.result, s.reason = REFUSED, str(exc)
        return
    await _break_and_follow(ctx, s, m, injector, before)


async def _break_and_follow(ctx: DrillContext, s: ScenarioRun, m: TargetMonitor,
                            injector: Injector, before: Snapshot) -> None:
    target, journal = ctx.run.target, ctx.journal
    last_id = _newest_id(journal)
    deadline = time.monotonic() + ctx.settings.timeout
    s.result, s.onset = RUNNING, now_utc()
    onset_mono = time.monotonic()
    log.info("drill=%d target=%s scenario=%s status=injecting", ctx.run.id, target, s.scenario)
    inc: Incident | None = None
    m.desk.drill = ctx.run.id  # what opens from here on is the drill's, for the metrics too
    try:
        try:
            with m.deploying():  # the injector's restart is the drill's deploy, not its fault
                s.injected = await injector.inject()
        except DrillError as exc:
            s.result, s.reason = FAILED, f"injection failed: {exc}"
            return
        s.timings["injected"] = round(time.monotonic() - onset_mono, 3)  # the fault is in place
        while (inc := _opened(journal, target, last_id)) is None:
            if time.monotonic() > deadline:
                s.result, s.reason = FAILED, (f"not detected within {ctx.settings.timeout:g}s "
                                              "(drills.timeout): the fault is still in place")
                return
            await asyncio.sleep(POLL)
        s.incident, s.detected_as = inc.id, inc.incident_class
        journal.incidents.add_event(inc.id, "drill", f"drill {ctx.run.id}: {s.scenario} injected at "
                                    f"{s.onset:%H:%M:%S.%f} UTC ({s.injected})"[:500])
        inc = await _follow(ctx, s, inc)
        await _judge(ctx, s, m, inc, injector, before)
    finally:
        m.desk.drill = None
        if inc is not None:
            _forget(ctx, inc, s.onset, onset_mono)


async def _follow(ctx: DrillContext, s: ScenarioRun, inc: Incident) -> Incident:
    """Wait for the incident to close, approving a waiting plan when the drill may."""
    assert s.onset is not None
    deadline = (s.onset.timestamp() + ctx.settings.timeout)
    found: Incident | None = inc
    while found is not None and found.closed_at is None and time.time() < deadline:
        m = ctx.monitor()
        if found.state == "awaiting_approval" and ctx.settings.approve and m is not None \
                and "approved" not in s.timings and await _approve(ctx, m, found):
            s.timings["approved"] = _after(s.onset, now_utc()) or 0.0
        await asyncio.sleep(POLL)
        found = ctx.journal.incidents.get(inc.id)
    return found or inc


async def _judge(ctx: DrillContext, s: ScenarioRun, m: TargetMonitor, inc: Incident,
                 injector: Injector, before: Snapshot) -> None:
    assert s.onset is not None
    for key, at in (("detected", inc.detected_at), ("rollback_started", inc.started_at),
                    ("rolled_back", inc.rolled_back_at), ("verified", inc.verified_at)):
        value = _after(s.onset, at)
        if value is not None:
            s.timings[key] = value
    expected = SCENARIOS[s.scenario].incident_class.value
    if inc.closed_at is None:
        s.result, s.reason = FAILED, (f"incident {inc.id} still {inc.state} after "
                                      f"{ctx.settings.timeout:g}s (drills.timeout)")
        return
    if inc.state != "resolved":
        s.result, s.reason = FAILED, f"incident {inc.id} ended {inc.state}: {inc.reason}"
        return
    if inc.incident_class != expected:
        s.result, s.reason = FAILED, f"detected as {inc.incident_class}, expected {expected}"
        return
    try:
        s.cleanup = await injector.cleanup()
    except (DrillError, StepFailed, OSError) as exc:
        s.cleanup = f"cleanup failed: {exc}"
    after = await snapshot(ctx.monitor() or m)
    s.after = after.to_dict()
    s.differences = before.differences(after)
    if s.differences:
        s.result, s.reason = FAILED, "the target is not exactly as healthy as before"
    else:
        s.result = PASSED


def _forget(ctx: DrillContext, inc: Incident, onset: datetime | None, onset_mono: float) -> None:
    """Once closed: not automatic (no limit or cooldown used up), no flapping counted."""
    m = ctx.monitor()
    if m is None:
        return
    m.desk.forget_drill(inc.id)
    if onset is not None:
        m.forget_transitions_since(onset_mono)

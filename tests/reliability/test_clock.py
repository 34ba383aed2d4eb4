"""Clock jumps, forward and back: limits and breakers neither fire nor get suppressed wrongly.

Where the daemon mixes wall time and durations:

- rollbackd/policies/ take `now` (wall time) and compare it with wall-time records that must survive a
  restart (rollback starts, breaker failures and opening, overrides). Going back in time must
  never open a gate: every limit, the cooldown, an open breaker and flapping only ever get
  stricter when `now` moves back (property below). A forward step is indistinguishable from
  time passing in these records (an open breaker half-opens: one attempt, which re-opens it if
  it fails), and a backward step makes them last longer by the step: both documented.
- in-process durations use time.monotonic (the runner's step timings, verification deadlines,
  the monitor's version cache, the shutdown grace, probe timeouts via asyncio). Two did not,
  and were fixed: the monitor kept its healthy/failing transitions (flapping) as wall times,
  and APScheduler plans probe runs in wall time, so a clock stepped back an hour ran no probe
  for an hour. Both are tested here against a jumping wall clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apscheduler.executors.base as aps_executors
import apscheduler.schedulers.base as aps_base
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.policies.breaker import Breaker, BreakerMode, current, record_failure, record_success
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, History, decide
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind
from rollbackd.policies.plans import Capability, StepSpec
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts
from rollbackd.probes.observation import Observation, Status, Symptom

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # a DST night somewhere: wall time is UTC here
POLICY = PolicySettings(max_rollbacks=2, window=3600, cooldown=300, breaker_failures=2,
                        breaker_reset=1800, flap_window=600, flap_changes=4)
STEPS = (StepSpec("git_checkout", True), StepSpec("restart_service", False))


def facts() -> Facts:
    good = LedgerEntry("a" * 40, NOW - timedelta(days=2), NOW - timedelta(days=2),
                       NOW - timedelta(days=2))
    bad = LedgerEntry("b" * 40, NOW - timedelta(minutes=5))
    return Facts(current_version=bad.version, ledger=(good, bad),
                 capabilities={Capability.DEPLOYMENT_ROLLBACK: STEPS})


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


offsets = st.floats(-7 * 86400, 7 * 86400, allow_nan=False)
histories = st.builds(
    History,
    rollbacks=st.lists(offsets.map(at), max_size=4).map(tuple),
    breakers=st.builds(
        lambda mode, fails, opened: {"deployment_rollback": Breaker(
            mode, tuple(map(at, fails)), at(opened) if mode is not BreakerMode.CLOSED else None)},
        st.sampled_from(BreakerMode), st.lists(offsets, max_size=3), offsets),
    transitions=st.lists(offsets.map(at), max_size=8).map(tuple),
    overrides=st.lists(st.builds(Override, st.sampled_from([OverrideKind.PAUSE,
                                                             OverrideKind.SILENCE]),
                                 st.sampled_from(["grading", None]), offsets.map(at),
                                 st.just("test"), st.just("uid 0")), max_size=2).map(tuple),
)


def action(history: History, now: datetime) -> Action:
    return decide(IncidentClass.APP_DOWN, "health down", facts(), history, now, POLICY,
                  "grading").action


@settings(max_examples=400, deadline=None, database=None)
@given(history=histories, back=st.floats(0, 30 * 86400, allow_nan=False),
       now=offsets.map(at))
def test_stepping_the_clock_back_never_opens_a_gate(history: History, back: float,
                                                    now: datetime) -> None:
    """Whatever the journal holds: if the daemon would not act at `now`, it does not act at any
    earlier `now` either (limits, cooldown, breaker, flapping and pauses only get stricter)."""
    if action(history, now - timedelta(seconds=back)) is Action.EXECUTE:
        assert action(history, now) is Action.EXECUTE


@pytest.mark.parametrize("back", [60, 3600, 86400, 365 * 86400])
def test_records_from_the_future_still_count_after_a_step_back(back: int) -> None:
    """A rollback stamped before the clock went back is "in the future": it still counts
    against max_rollbacks and holds the cooldown; an open breaker stays open."""
    now = NOW - timedelta(seconds=back)
    assert action(History(rollbacks=(NOW, NOW)), now) is Action.ESCALATE  # the limit
    assert "cooldown" in decide(IncidentClass.APP_DOWN, "x", facts(), History(rollbacks=(NOW,)),
                                now, POLICY.model_copy(update={"max_rollbacks": 5}), "grading").reason
    opened = Breaker(BreakerMode.OPEN, (NOW,), NOW)
    assert current(opened, now, POLICY.breaker_reset).mode is BreakerMode.OPEN
    assert action(History(breakers={"deployment_rollback": opened}), now) is Action.ESCALATE


@settings(max_examples=400, deadline=None, database=None)
@given(events=st.lists(st.tuples(offsets, st.booleans()), min_size=1, max_size=12))
def test_a_breaker_closes_only_after_a_successful_trial_whatever_the_clock_does(
        events: list[tuple[float, bool]]) -> None:
    """Any sequence of outcomes at any (jumping) times: open -> closed only through half-open
    and a success; a failed half-open trial re-opens it at once; failures are never lost."""
    b = Breaker()
    for offset, ok in events:
        now = at(offset)
        before = current(b, now, POLICY.breaker_reset)
        after = (record_success if ok else lambda x, n, r: record_failure(
            x, n, POLICY.breaker_failures, POLICY.window, r))(b, now, POLICY.breaker_reset)
        if b.mode is BreakerMode.OPEN and after.mode is BreakerMode.CLOSED:
            assert before.mode is BreakerMode.HALF_OPEN and ok
        if before.mode is BreakerMode.HALF_OPEN and not ok:
            assert after.mode is BreakerMode.OPEN and after.opened_at == now
        if not ok:
            assert now in after.failures
        b = after


# -- the daemon's own clocks -----------------------------------------------------------------

class JumpingClock:
    """Wall time = real wall time + offset, for APScheduler and the daemon's wall readers."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def datetime_class(self) -> type[dt.datetime]:
        clock = self

        class Jumping(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> Jumping:  # type: ignore[override]
                return dt.datetime.now(tz) + timedelta(seconds=clock.offset)  # type: ignore[return-value]

        return Jumping


@pytest.mark.parametrize("step", [-3600.0, -86400.0, 3600.0, 86400.0])
async def test_probes_keep_their_rhythm_when_the_clock_is_stepped(
        monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    clock = JumpingClock()
    jumping = clock.datetime_class()  # every clock APScheduler reads
    monkeypatch.setattr(aps_base, "datetime", jumping)
    monkeypatch.setattr(aps_executors, "datetime", jumping)
    sched = ProbeScheduler(Metrics(CollectorRegistry()))
    sched.wall, sched.clock_check = clock.time, 0.1
    runs: list[float] = []
    drills: list[float] = []

    async def probe() -> None:
        runs.append(time.monotonic())

    async def drill() -> None:
        drills.append(time.monotonic())

    sched.scheduler.add_job(probe, "interval", seconds=0.2, max_instances=1, coalesce=True,
                            misfire_grace_time=1)
    # A cron job (like a drill) keeps its wall time: not pulled to now by the step.
    sched.scheduler.add_job(drill, "cron", hour=(datetime.now(UTC).hour + 12) % 24)
    sched.start()
    try:
        await asyncio.sleep(0.6)
        assert len(runs) >= 2
        clock.offset = step
        stepped = time.monotonic()
        await asyncio.sleep(1.4)
        after = [t for t in runs if t > stepped]
        # Probing goes on within a couple of check periods, at its interval.
        assert after and after[0] - stepped < 0.8, (step, after[:3])
        assert len(after) >= 5, (step, len(after))
        assert drills == []
    finally:
        sched.shutdown()


async def test_flapping_is_judged_on_real_time_not_on_the_wall_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four healthy/failing changes in a minute are flapping, whatever the wall clock did in
    between (an hour forward would have hidden them; a day back would keep old ones)."""
    import rollbackd.daemon.monitor as monitor_module

    cfg = parse_config('[targets.web.probes.health]\nkind = "http_health"\n'
                       'url = "http://127.0.0.1:9/"\nfailure_threshold = 1\n')
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        m = TargetMonitor("web", cfg.targets["web"], POLICY, journal, Outbox(journal, cfg),
                          Metrics(CollectorRegistry()), tmp_path / "reports")
        offset = [0.0]
        real_now = monitor_module.now_utc
        monkeypatch.setattr(monitor_module, "now_utc",
                            lambda: real_now() + timedelta(seconds=offset[0]))
        for i, ok in enumerate([False, True, False, True]):
            offset[0] = [0.0, 3600.0, -86400.0, 7200.0][i]  # the clock jumps between changes
            m._record(Observation("health", "http_health", Status.OK if ok else Status.FAIL,
                                  "x", 0.01, None if ok else Symptom.UNREACHABLE))
        now = monitor_module.now_utc()
        transitions = m.history().transitions
        assert len(transitions) == 4
        assert all(timedelta(0) <= now - t < timedelta(seconds=5) for t in transitions)
        d = decide(IncidentClass.APP_DOWN, "down", facts(), m.history(), now, POLICY, "web")
        assert d.action is Action.HOLD and "flapping" in d.reason
    finally:
        journal.close()

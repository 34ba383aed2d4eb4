"""The start period's rule as a table: hold, exited, over, none; and which starts open one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollbackd.policies.start_period import Phase, Start, judge, opens

DEPLOY = Start(100.0, "release 1a2b3c4 deployed", release=True)
RESTART = Start(100.0, "the restart of pid 42")


@pytest.mark.parametrize(("start", "now", "period", "running", "held", "phase"), [
    pytest.param(None, 110.0, 30.0, True, False, Phase.NONE, id="no-start-seen"),
    pytest.param(DEPLOY, 110.0, 0.0, True, False, Phase.NONE, id="period-off"),
    pytest.param(DEPLOY, 110.0, 30.0, True, False, Phase.HOLD, id="starting"),
    pytest.param(DEPLOY, 110.0, 30.0, None, False, Phase.HOLD, id="cannot-tell-still-holds"),
    pytest.param(RESTART, 129.0, 30.0, True, True, Phase.HOLD, id="restart-still-starting"),
    pytest.param(DEPLOY, 105.0, 30.0, False, False, Phase.EXITED, id="exited-within"),
    pytest.param(DEPLOY, 131.0, 30.0, True, True, Phase.OVER, id="held-then-over"),
    pytest.param(DEPLOY, 131.0, 30.0, False, True, Phase.OVER, id="over-and-exited"),
    pytest.param(DEPLOY, 131.0, 30.0, True, False, Phase.NONE, id="long-after-never-held"),
])
def test_judge(start: Start | None, now: float, period: float, running: bool | None,
               held: bool, phase: Phase) -> None:
    verdict = judge(start, now, period, running, held)
    assert verdict.phase is phase
    assert bool(verdict.note) == (phase is not Phase.NONE)
    if start is not None and phase is not Phase.NONE:
        assert start.cause in verdict.note and f"{period:g}s start period" in verdict.note


def test_the_notes_say_what_happened() -> None:
    assert judge(DEPLOY, 105.0, 30.0, False, False).note == (
        "the process exited 5s into the 30s start period after release 1a2b3c4 deployed: not "
        "waiting for the period to end")
    assert judge(DEPLOY, 131.0, 30.0, True, True).note == (
        "still failing after the 30s start period after release 1a2b3c4 deployed")


@pytest.mark.parametrize(("current", "seen", "healthy", "expected"), [
    pytest.param(None, RESTART, False, True, id="first-start-seen"),
    pytest.param(DEPLOY, Start(100.5, "the restart of pid 42"), False, False,
                 id="the-deploy-seen-again-as-its-restart"),
    pytest.param(DEPLOY, Start(160.0, "release 9f8e7d6 deployed", release=True), False, True,
                 id="a-new-release-always"),
    pytest.param(DEPLOY, Start(160.0, "the restart of pid 43"), True, True,
                 id="restart-of-a-healthy-app"),
    pytest.param(DEPLOY, Start(160.0, "the restart of pid 43"), False, False,
                 id="crash-loop-gets-no-new-period"),
    pytest.param(DEPLOY, Start(90.0, "the restart of pid 41"), True, False, id="older-start"),
])
def test_opens(current: Start | None, seen: Start, healthy: bool, expected: bool) -> None:
    assert opens(current, seen, healthy) is expected


@given(at=st.floats(0, 1e6), age=st.floats(0, 1e5), period=st.floats(0, 600),
       running=st.sampled_from([True, False, None]), held=st.booleans())
def test_within_the_period_only_an_exit_acts_and_after_it_only_a_hold_is_named(
        at: float, age: float, period: float, running: bool | None, held: bool) -> None:
    now = at + age
    age = now - at  # as judge sees it (floats round)
    verdict = judge(Start(at, "release x deployed", release=True), now, period, running, held)
    if period > 0 and age < period:
        assert verdict.phase is (Phase.EXITED if running is False else Phase.HOLD)
    else:
        assert verdict.phase is (Phase.OVER if held and period > 0 else Phase.NONE)

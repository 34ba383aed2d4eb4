"""The latency baseline: windowed p95 against a rolling known-good p95, for perf_degraded."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rollbackd.policies.latency import LatencyState, explain, limit, percentile, track
from rollbackd.probes.http_health import HttpHealthSettings, LatencySettings
from rollbackd.probes.login import LoginSettings

FAST, SLOW, VERY_FAST = 0.05, 0.5, 0.01
SAMPLES = {"f": FAST, "s": SLOW, "v": VERY_FAST, "x": None}
S = LatencySettings(factor=2.0, floor=0.1, window=10, windows=2, min_samples=2,
                    baseline_samples=8, baseline_min=4)
PROPS = settings(max_examples=300, deadline=None, database=None)


def feed(spec: str, s: LatencySettings = S, close: bool = True) -> LatencyState:
    """Windows separated by spaces, one letter per observation: f fast, s slow, v very fast,
    x a failed answer; a leading ! marks a window where the target was not healthy, and "_"
    a window without any observation. `close` sends one more observation to judge the last."""
    state = LatencyState()
    windows = spec.split()
    for i, window in enumerate(windows):
        healthy = not window.startswith("!")
        letters = window.lstrip("!").replace("_", "")
        for j, letter in enumerate(letters):
            at = (1000 + i) * s.window + (j + 0.5) * s.window / (len(letters) + 1)
            state = track(state, s, at, SAMPLES[letter], healthy)
    if close:
        state = track(state, s, (1000 + len(windows)) * s.window, None, True)
    return state


# spec, degraded, slow windows in a row, baseline (None: not learned yet)
CASES = [
    pytest.param("", False, 0, None, id="nothing-seen"),
    pytest.param("ff", False, 0, None, id="one-window-is-not-a-baseline"),
    pytest.param("ff ff", False, 0, FAST, id="two-good-windows-make-the-baseline"),
    pytest.param("ss ss ss", False, 0, SLOW, id="without-a-baseline-nothing-is-slow"),
    pytest.param("ff ff ss", False, 1, FAST, id="one-slow-window-is-not-enough"),
    pytest.param("ff ff ss ss", True, 2, FAST, id="n-slow-windows-in-a-row-degrade"),
    pytest.param("ff ff ss ss ss ss", True, 4, FAST, id="stays-degraded-while-slow"),
    pytest.param("ff ff ss ss ff", False, 0, FAST, id="a-good-window-recovers"),
    pytest.param("ff ff ss ff ss", False, 1, FAST, id="a-good-window-ends-the-streak"),
    pytest.param("ff ff ss s ss", False, 1, FAST, id="too-few-samples-end-the-streak"),
    pytest.param("ff ff ss sx ss", False, 1, FAST, id="failed-answers-are-not-samples"),
    pytest.param("ff ff ss _ ss", False, 1, FAST, id="an-unseen-window-ends-the-streak"),
    pytest.param("ff ff ss ssx", True, 2, FAST, id="failed-answers-beside-enough-samples"),
    pytest.param("ff ff ffs ss", True, 2, FAST, id="p95-of-a-small-mixed-window-is-its-slow-one"),
    pytest.param("ff ff sffffffffffffffffffff ss", False, 1, FAST,
                 id="one-outlier-in-twenty-one-is-above-p95"),
    pytest.param("vv vv ff ff", False, 0, FAST, id="five-times-slower-but-below-floor"),
    pytest.param("!ff !ff", False, 0, None, id="unhealthy-windows-are-not-learned"),
    pytest.param("!ss ff ff", False, 0, FAST, id="only-healthy-windows-are-learned"),
    pytest.param("ff ff ss ss ss ff ff", False, 0, FAST, id="slow-windows-are-never-learned"),
]


@pytest.mark.parametrize(("spec", "degraded", "slow", "baseline"), CASES)
def test_windows(spec: str, degraded: bool, slow: int, baseline: float | None) -> None:
    state = feed(spec)
    assert (state.degraded, state.slow, state.baseline) == (degraded, slow, baseline)


def test_degraded_only_once_the_window_closes() -> None:
    open_ = feed("ff ff ss ss", close=False)
    assert not open_.degraded and open_.slow == 1 and open_.samples == (SLOW, SLOW)
    assert feed("ff ff ss ss").degraded


def test_baseline_rolls_over_the_newest_samples() -> None:
    state = feed("ff ff ff ff")
    assert state.learned == (FAST,) * 8
    state = feed("ff ff ff ff vv vv vv vv")  # drifts down: the newest 8 are all very fast
    assert state.learned == (VERY_FAST,) * 8 and state.baseline == VERY_FAST


def test_limit_is_baseline_times_factor_or_floor() -> None:
    assert limit(LatencyState(), S) is None
    assert limit(LatencyState(baseline=0.2), S) == pytest.approx(0.4)
    assert limit(LatencyState(baseline=0.01), S) == 0.1


def test_clock_stepping_back_counts_in_the_open_window() -> None:
    state = track(LatencyState(), S, 1005.0, FAST, True)
    state = track(state, S, 990.0, FAST, True)
    assert state.window == 100 and state.samples == (FAST, FAST)


def test_explain() -> None:
    state = feed("ff ff ss ss")
    assert explain(state, S) == ("p95 latency 500 ms, above 100 ms for 2 windows of 10s in a row "
                                 "(baseline p95 50 ms x 2, floor 100 ms)")
    assert explain(feed("ff ff"), S) == "latency is within its baseline"


@pytest.mark.parametrize(("values", "q", "expected"), [
    pytest.param([3.0], 0.95, 3.0, id="one"),
    pytest.param([1.0, 2.0], 0.95, 2.0, id="two"),
    pytest.param([float(i) for i in range(1, 101)], 0.95, 95.0, id="hundred"),
    pytest.param([float(i) for i in range(20, 0, -1)], 0.95, 19.0, id="unsorted-twenty"),
    pytest.param([5.0, 1.0, 3.0], 0.5, 3.0, id="median"),
])
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError):
        percentile([])


@pytest.mark.parametrize(("kw", "message"), [
    pytest.param({"factor": 1.0}, "greater than 1", id="factor-must-exceed-one"),
    pytest.param({"floor": "0s"}, "greater than 0", id="floor-positive"),
    pytest.param({"window": 0}, "greater than 0", id="window-positive"),
    pytest.param({"windows": 0}, "greater than or equal to 1", id="windows-at-least-one"),
    pytest.param({"baseline_min": 50, "baseline_samples": 10}, "must not exceed",
                 id="baseline-min-fits"),
    pytest.param({"factr": 2}, "Extra inputs", id="typo"),
])
def test_bad_settings(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LatencySettings(**kw)


def test_http_probes_take_latency_settings() -> None:
    health = HttpHealthSettings(url="http://127.0.0.1:1/health",
                                latency={"factor": 3, "window": "30s", "floor": "200ms"})
    assert health.latency == LatencySettings(factor=3, window=30, floor=0.2)
    login = LoginSettings(url="http://127.0.0.1:1/login", email="a@b.c",
                          password_file="/run/pw", latency={})
    assert login.latency == LatencySettings()
    assert HttpHealthSettings(url="http://127.0.0.1:1/").latency is None


# --- properties ------------------------------------------------------------------------------

latency_settings = st.builds(
    lambda factor, floor, window, windows, min_samples, bmin, extra: LatencySettings(
        factor=factor, floor=floor, window=window, windows=windows, min_samples=min_samples,
        baseline_min=bmin, baseline_samples=bmin + extra),
    st.floats(1.01, 4.0), st.floats(0.001, 1.0), st.floats(0.5, 60.0), st.integers(1, 4),
    st.integers(1, 4), st.integers(1, 10), st.integers(0, 30))
LEVELS = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
# (time since the previous observation in windows, latency or None for a failed answer, healthy)
Step = tuple[float, float | None, bool]
noise = st.lists(st.tuples(st.floats(0.0, 2.5), st.none() | st.floats(0.0, 3.0), st.booleans()),
                 max_size=120)
# Regimes (a steady level for a while), so that baselines form and slowdowns follow them.
regimes = st.lists(
    st.tuples(st.sampled_from(LEVELS), st.integers(1, 40), st.floats(0.05, 0.7),
              st.sampled_from([True, True, True, False]), st.sampled_from([0, 0, 0, 2, 5])),
    max_size=8,
).map(lambda blocks: [
    (dt, None if fails and i % fails == 0 else level, healthy)
    for level, count, dt, healthy, fails in blocks for i in range(count)])
steps = st.one_of(noise, regimes, regimes)


def _windows_seen(s: LatencySettings, seq: list[Step]
                  ) -> tuple[LatencyState, list[tuple[LatencyState, dict[int, list[float]]]]]:
    state, at, seen = LatencyState(), 0.0, defaultdict(list)
    trace = []
    for dt, latency, healthy in seq:
        at += dt * s.window
        state = track(state, s, at, latency, healthy)
        if latency is not None:
            seen[math.floor(at / s.window)].append(latency)
        trace.append((state, {k: list(v) for k, v in seen.items()}))
    return state, trace


@PROPS
@given(s=latency_settings, seq=steps)
def test_degraded_needs_n_consecutive_slow_windows_above_the_floor(
        s: LatencySettings, seq: list[Step]) -> None:
    _, trace = _windows_seen(s, seq)
    event(f"degraded: {any(state.degraded for state, _ in trace)}")
    for state, seen in trace:
        if not state.degraded:
            continue
        assert state.window is not None and state.slow >= s.windows
        # Judged from the raw observations, not from the tracker's own bookkeeping: each of the
        # N windows just before the open one had enough answers, and its p95 was over the floor.
        for w in range(state.window - s.windows, state.window):
            assert len(seen.get(w, [])) >= s.min_samples
            assert percentile(seen[w]) > s.floor


@PROPS
@given(s=latency_settings, seq=steps)
def test_never_degraded_below_the_floor(s: LatencySettings,
                                        seq: list[Step]) -> None:
    capped = [(dt, None if x is None else min(x, s.floor), h) for dt, x, h in seq]
    _, trace = _windows_seen(s, capped)
    assert not any(state.degraded for state, _ in trace)


@PROPS
@given(s=latency_settings, seq=steps)
def test_baseline_is_bounded_and_learned_only_while_healthy(
        s: LatencySettings, seq: list[Step]) -> None:
    sick = [(dt, x, False) for dt, x, _ in seq]
    final, _ = _windows_seen(s, sick)
    assert final.learned == () and final.baseline is None and not final.degraded
    final, _ = _windows_seen(s, seq)
    assert len(final.learned) <= s.baseline_samples
    assert (final.baseline is None) == (len(final.learned) < s.baseline_min)

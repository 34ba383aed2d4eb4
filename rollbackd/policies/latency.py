"""perf_degraded: each window's p95 latency against a rolling baseline from the known-good period.

Pure: the caller feeds every observation of one probe (its time, its latency when it was OK,
whether the whole target was healthy) and keeps the returned state. Windows are aligned to the
clock (window i covers [i * window, (i + 1) * window)), so equal inputs give equal verdicts.
A window is judged when the first observation of a later window arrives:

- fewer than `min_samples` OK latencies: not judged, and the streak of slow windows ends;
- no baseline yet (fewer than `baseline_min` latencies learned): not judged;
- p95 above both baseline x factor and floor: slow, the streak grows;
- otherwise good: the streak ends, and when the target was healthy all through the window,
  its latencies join the baseline (the newest `baseline_samples` of them).

Degraded means the last `windows` windows were all slow; a window without any observation
also ends the streak. Slow windows never join the baseline, so a slowdown cannot teach it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rollbackd.probes.http import LatencySettings

PERCENTILE = 0.95
"""Both the windows and the baseline are judged by their 95th percentile."""


def percentile(values: Sequence[float], q: float = PERCENTILE) -> float:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True)
class LatencyState:
    window: int | None = None
    """Index of the open window (time // window), None before the first observation."""
    samples: tuple[float, ...] = ()
    """OK latencies seen in the open window."""
    healthy: bool = True
    """Whether the target was healthy at every observation of the open window."""
    learned: tuple[float, ...] = ()
    """The baseline's latencies, oldest first."""
    baseline: float | None = None
    """p95 of `learned` once it holds baseline_min latencies."""
    slow: int = 0
    """Slow windows in a row, up to the last one judged."""
    degraded: bool = False
    last_p95: float | None = None
    """p95 of the last window judged."""


def limit(state: LatencyState, s: LatencySettings) -> float | None:
    """The p95 a window must exceed to be slow, or None while there is no baseline."""
    return None if state.baseline is None else max(state.baseline * s.factor, s.floor)


def track(state: LatencyState, s: LatencySettings, at: float, latency: float | None,
          healthy: bool) -> LatencyState:
    """The state after one observation at `at` (seconds since the epoch).

    `latency` is the observation's latency when it was OK, else None (a failed answer says
    nothing about speed); `healthy` is whether the whole target was healthy at that moment.
    """
    index = math.floor(at / s.window)
    if state.window is None:
        state = replace(state, window=index)
    elif index > state.window:
        closed = _close(state, s)
        if index > state.window + 1:  # a whole window went by unseen: the streak is broken
            closed = replace(closed, slow=0, degraded=False)
        state = replace(closed, window=index, samples=(), healthy=True)
    # An observation older than the open window (the clock stepped back) counts in the open one.
    samples = state.samples if latency is None else (*state.samples, latency)
    return replace(state, samples=samples, healthy=state.healthy and healthy)


def _close(state: LatencyState, s: LatencySettings) -> LatencyState:
    if len(state.samples) < s.min_samples:
        return replace(state, slow=0, degraded=False, last_p95=None)
    p95 = percentile(state.samples)
    bound = limit(state, s)
    if bound is not None and p95 > bound:
        slow = state.slow + 1
        return replace(state, slow=slow, degraded=slow >= s.windows, last_p95=p95)
    state = replace(state, slow=0, degraded=False, last_p95=p95)
    if not state.healthy:
        return state
    learned = (*state.learned, *state.samples)[-s.baseline_samples:]
    baseline = percentile(learned) if len(learned) >= s.baseline_min else None
    return replace(state, learned=learned, baseline=baseline)


def explain(state: LatencyState, s: LatencySettings) -> str:
    """Why the probe counts as degraded, for the observation's detail."""
    bound = limit(state, s)
    if not state.degraded or bound is None or state.baseline is None or state.last_p95 is None:
        return "latency is within its baseline"
    return (f"p95 latency {state.last_p95 * 1000:.0f} ms, above {bound * 1000:.0f} ms for "
            f"{state.slow} windows of {s.window:g}s in a row (baseline p95 "
            f"{state.baseline * 1000:.0f} ms x {s.factor:g}, floor {s.floor * 1000:.0f} ms)")

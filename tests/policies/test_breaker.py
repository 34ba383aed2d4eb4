"""The circuit breaker: closed -> open -> half-open -> closed or open again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.breaker import Breaker, BreakerMode, current, record_failure, record_success

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
THRESHOLD = 2
WINDOW = 600.0
RESET = 1800.0
FAST = settings(max_examples=300, deadline=None, database=None)

CLOSED, OPEN, HALF = BreakerMode.CLOSED, BreakerMode.OPEN, BreakerMode.HALF_OPEN


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def apply(
    b: Breaker,
    event: str,
    at: datetime,
    threshold: int = THRESHOLD,
    window: float = WINDOW,
    reset: float = RESET,
) -> Breaker:
    """One event as the daemon should apply it: first bring the breaker up to `at`."""
    b = current(b, at, reset)
    if event == "fail":
        return record_failure(b, at, threshold, window, reset)
    if event == "ok":
        return record_success(b, at, reset)
    assert event == "tick"
    return b


def replay(events: list[tuple[str, float]], threshold: int = THRESHOLD) -> Breaker:
    b = Breaker()
    for event, offset in events:
        b = apply(b, event, t(offset), threshold)
    return b


# events (kind, seconds after T0), threshold, expected mode, expected opened_at (seconds)
TRANSITIONS = [
    pytest.param([], THRESHOLD, CLOSED, None, id="starts-closed"),
    pytest.param([("fail", 0)], THRESHOLD, CLOSED, None, id="one-failure-below-threshold"),
    pytest.param([("fail", 0)], 1, OPEN, 0, id="threshold-1-opens-at-once"),
    pytest.param([("fail", 0), ("fail", 10)], THRESHOLD, OPEN, 10, id="closed-to-open"),
    pytest.param(
        [("fail", 0), ("fail", WINDOW - 1)], THRESHOLD, OPEN, WINDOW - 1, id="just-inside-window"
    ),
    pytest.param(
        [("fail", 0), ("fail", WINDOW)], THRESHOLD, CLOSED, None, id="exactly-window-apart"
    ),
    pytest.param(
        [("fail", 0), ("fail", 5000)], THRESHOLD, CLOSED, None, id="far-outside-window"
    ),
    pytest.param(
        [("fail", 0), ("fail", 400), ("fail", 900)], 3, CLOSED, None, id="three-spread-over-windows"
    ),
    pytest.param([("fail", 0), ("fail", 300), ("fail", 599)], 3, OPEN, 599, id="three-in-window"),
    pytest.param([("fail", 0), ("ok", 5), ("fail", 10)], THRESHOLD, OPEN, 10, id="ok-when-closed"),
    pytest.param(
        [("fail", 0), ("fail", 10), ("tick", 10 + RESET - 1)], THRESHOLD, OPEN, 10,
        id="open-until-reset",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("tick", 10 + RESET)], THRESHOLD, HALF, 10,
        id="open-to-half-open-at-reset",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("fail", 10 + RESET)], THRESHOLD, OPEN, 10 + RESET,
        id="failure-in-half-open-reopens",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("fail", 10 + 10 * RESET)], THRESHOLD, OPEN, 10 + 10 * RESET,
        id="failure-in-half-open-reopens-with-old-failures-gone",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("ok", 10 + RESET)], THRESHOLD, CLOSED, None,
        id="success-in-half-open-closes",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("ok", 20)], THRESHOLD, OPEN, 10,
        id="success-while-open-does-not-close",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("fail", 10 + RESET), ("tick", 10 + 2 * RESET - 1)],
        THRESHOLD, OPEN, 10 + RESET, id="reopened-waits-a-full-reset",
    ),
    pytest.param(
        [("fail", 0), ("fail", 10), ("ok", 10 + RESET), ("fail", 20 + RESET)],
        THRESHOLD, CLOSED, None, id="closed-again-starts-counting-afresh",
    ),
]


@pytest.mark.parametrize(("events", "threshold", "mode", "opened_at"), TRANSITIONS)
def test_transitions(
    events: list[tuple[str, float]], threshold: int, mode: BreakerMode, opened_at: float | None
) -> None:
    b = replay(events, threshold)
    last = t(events[-1][1]) if events else T0
    now = current(b, last, RESET)
    assert now.mode is mode
    if opened_at is None:
        assert now.opened_at is None
    else:
        assert now.opened_at == t(opened_at)


def test_success_in_half_open_forgets_failures() -> None:
    b = replay([("fail", 0), ("fail", 10), ("ok", 10 + RESET)])
    assert b == Breaker()


def test_failures_outside_the_window_are_dropped() -> None:
    b = replay([("fail", 0), ("fail", 700), ("fail", 1000)], threshold=5)
    assert b.failures == (t(700), t(1000))


def test_current_does_not_touch_closed_or_half_open() -> None:
    closed = Breaker(CLOSED, (t(0),), None)
    half = Breaker(HALF, (t(0),), t(0))
    assert current(closed, t(10**6), RESET) == closed
    assert current(half, t(10**6), RESET) == half


def test_failure_recorded_on_stored_open_breaker_reopens_it() -> None:
    # Opened at T0 by two failures; 4000 s later (past reset_after=1800 and window=3600, the
    # defaults) the breaker is half-open, the one allowed attempt fails, and the runner records
    # the failure on the breaker as loaded from the journal.
    stored = Breaker(OPEN, (t(-10), t(0)), t(0))
    assert current(stored, t(4000), RESET).mode is HALF
    after = record_failure(stored, t(4000), threshold=2, window=3600, reset_after=RESET)
    assert current(after, t(4000), RESET).mode is OPEN


@FAST
@given(
    threshold=st.integers(min_value=1, max_value=6),
    window=st.integers(min_value=1, max_value=100_000),
    reset=st.integers(min_value=1, max_value=100_000),
    data=st.data(),
)
def test_open_until_reset_after_threshold_failures_in_a_window(
    threshold: int, window: int, reset: int, data: st.DataObject
) -> None:
    # Some earlier history: failures long before (outside the window of the burst).
    old = data.draw(st.lists(st.integers(0, 10_000), max_size=4), label="old")
    start = 10_000 + window  # every "old" failure is at least `window` before the burst
    burst = sorted(
        data.draw(
            st.lists(
                st.integers(start, start + window - 1), min_size=threshold, max_size=threshold
            ),
            label="burst",
        )
    )
    b = Breaker()
    for offset in sorted(old):
        b = apply(b, "fail", t(offset), threshold, window, reset)
    for offset in burst:
        b = apply(b, "fail", t(offset), threshold, window, reset)
    last = t(burst[-1])
    assert b.mode is OPEN
    assert b.opened_at == last
    delta = data.draw(st.integers(0, reset - 1), label="delta")
    assert current(b, last + timedelta(seconds=delta), reset).mode is OPEN
    assert current(b, last + timedelta(seconds=reset), reset).mode is HALF


@FAST
@given(
    threshold=st.integers(min_value=2, max_value=6),
    window=st.integers(min_value=1, max_value=10_000),
    gaps=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30),
)
def test_opens_exactly_when_threshold_failures_fall_in_a_window(
    threshold: int, window: int, gaps: list[int]
) -> None:
    reset = 10**9  # never half-open within the run: once open, it stays open
    b = Breaker()
    times: list[int] = []
    now = 0
    tripped = False
    for gap in gaps:
        now += gap
        times.append(now)
        b = apply(b, "fail", t(now), threshold, window, reset)
        tripped = tripped or sum(1 for x in times if now - x < window) >= threshold
        assert (b.mode is OPEN) is tripped

"""Operator overrides (expiry, target vs global, longest wins) and weekly maintenance windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.overrides import Override, OverrideKind, active, in_maintenance
from rollbackd.policies.settings import DAYS, MaintenanceWindow

# Wednesday 2024-05-01 03:00 UTC; 2024-05-05 is a Sunday, 2024-05-06 a Monday.
NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
FAST = settings(max_examples=400, deadline=None, database=None)
WEEK = timedelta(days=7)
US = timedelta(microseconds=1)
P, SIL, M = OverrideKind.PAUSE, OverrideKind.SILENCE, OverrideKind.MAINTENANCE


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    """An instant around Wednesday 2024-05-01, UTC: day 30 is Tuesday 30 April."""
    return datetime(2024, 4 if day >= 29 else 5, day, hh, mm, ss, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def ov(kind: OverrideKind, target: str | None, until: datetime, reason: str = "r") -> Override:
    return Override(kind, target, until, reason, "uid 1000")


# ---------------------------------------------------------------------------------------------
# Override.applies and active()

@pytest.mark.parametrize(("override", "target", "now", "applies"), [
    pytest.param(ov(P, "web", later(60)), "web", NOW, True, id="target-in-force"),
    pytest.param(ov(P, "web", later(60)), "api", NOW, False, id="other-target"),
    pytest.param(ov(P, None, later(60)), "web", NOW, True, id="global-applies-to-web"),
    pytest.param(ov(P, None, later(60)), "api", NOW, True, id="global-applies-to-api"),
    pytest.param(ov(P, "web", NOW), "web", NOW, False, id="expires-at-until"),
    pytest.param(ov(P, "web", NOW + US), "web", NOW, True, id="a-microsecond-left"),
    pytest.param(ov(P, "web", NOW - US), "web", NOW, False, id="expired"),
    pytest.param(ov(P, None, NOW), "web", NOW, False, id="global-expired"),
    pytest.param(ov(P, "web", later(60)), "web", later(60), False, id="expired-later"),
    pytest.param(ov(P, "web", later(60)), "", NOW, False, id="empty-target-is-not-global"),
])
def test_applies(override: Override, target: str, now: datetime, applies: bool) -> None:
    assert override.applies(target, now) is applies


def test_active_none_without_overrides() -> None:
    assert active((), "web", NOW, P) is None


def test_active_filters_by_kind() -> None:
    overrides = (ov(SIL, "web", later(600)), ov(M, None, later(600)))
    assert active(overrides, "web", NOW, P) is None
    assert active(overrides, "web", NOW, SIL) == overrides[0]
    assert active(overrides, "web", NOW, M) == overrides[1]


def test_active_filters_by_target_and_expiry() -> None:
    overrides = (ov(P, "api", later(3600)), ov(P, "web", NOW), ov(P, None, NOW - US))
    assert active(overrides, "web", NOW, P) is None
    assert active(overrides, "api", NOW, P) == overrides[0]


@pytest.mark.parametrize(("overrides", "expected"), [
    pytest.param((ov(P, "web", later(600), "a"), ov(P, None, later(1200), "b")), "b",
                 id="global-lasts-longer"),
    pytest.param((ov(P, "web", later(1200), "a"), ov(P, None, later(600), "b")), "a",
                 id="target-lasts-longer"),
    pytest.param((ov(P, "web", later(60), "a"), ov(P, "web", later(7200), "b"),
                  ov(P, "web", later(600), "c")), "b", id="longest-of-three"),
    pytest.param((ov(P, "web", later(60), "a"), ov(P, "api", later(7200), "b")), "a",
                 id="other-targets-longer-one-ignored"),
    pytest.param((ov(P, "web", later(60), "a"), ov(SIL, "web", later(7200), "b")), "a",
                 id="other-kinds-longer-one-ignored"),
])
def test_longest_lasting_wins(overrides: tuple[Override, ...], expected: str) -> None:
    found = active(overrides, "web", NOW, P)
    assert found is not None and found.reason == expected


def test_the_winner_changes_as_overrides_expire() -> None:
    short, long_ = ov(P, "web", later(60), "short"), ov(P, None, later(600), "long")
    assert active((short, long_), "web", NOW, P) == long_
    assert active((short, long_), "web", later(599), P) == long_
    assert active((short, long_), "web", later(600), P) is None


overrides_st = st.lists(
    st.builds(ov, st.sampled_from(list(OverrideKind)), st.sampled_from([None, "web", "api"]),
              st.integers(-3600, 3600).map(later), st.text("xyz", max_size=3)),
    max_size=6,
).map(tuple)


@FAST
@given(overrides=overrides_st, kind=st.sampled_from(list(OverrideKind)),
       target=st.sampled_from(["web", "api"]), offset=st.integers(-100, 3700))
def test_active_is_the_latest_expiring_applicable_one(
    overrides: tuple[Override, ...], kind: OverrideKind, target: str, offset: int
) -> None:
    now = later(offset)
    applicable = [o for o in overrides
                  if o.kind is kind and (o.target is None or o.target == target) and now < o.until]
    found = active(overrides, target, now, kind)
    if not applicable:
        assert found is None
    else:
        assert found in applicable
        assert found is not None and found.until == max(o.until for o in applicable)


# ---------------------------------------------------------------------------------------------
# in_maintenance: weekly windows in UTC, start inclusive, end exclusive

def win(days: list[str], start: str, duration: float) -> MaintenanceWindow:
    return MaintenanceWindow(days=days, start=start, duration=duration)  # type: ignore[arg-type]


TUE_NIGHT = win(["tue"], "23:30", 7200)  # Tue 23:30 -> Wed 01:30, across midnight
SUN_NIGHT = win(["sun"], "22:00", 4 * 3600)  # Sun 22:00 -> Mon 02:00, across the week's end
WEEKDAYS = win(["mon", "tue", "wed", "thu", "fri"], "02:00", 1800)
WHOLE_MONDAY = win(["mon"], "00:00", 86400)


@pytest.mark.parametrize(("window", "now", "inside"), [
    pytest.param(TUE_NIGHT, at(30, 23, 30), True, id="start-inclusive"),
    pytest.param(TUE_NIGHT, at(30, 23, 29, 59), False, id="a-second-before-start"),
    pytest.param(TUE_NIGHT, at(30, 23, 30) - US, False, id="a-microsecond-before-start"),
    pytest.param(TUE_NIGHT, at(30, 23, 59, 59), True, id="before-midnight"),
    pytest.param(TUE_NIGHT, at(1, 0, 0), True, id="midnight"),
    pytest.param(TUE_NIGHT, at(1, 0, 15), True, id="after-midnight-next-day"),
    pytest.param(TUE_NIGHT, at(1, 1, 30) - US, True, id="a-microsecond-before-end"),
    pytest.param(TUE_NIGHT, at(1, 1, 30), False, id="end-exclusive"),
    pytest.param(TUE_NIGHT, at(1, 23, 45), False, id="wednesday-night-not-listed"),
    pytest.param(TUE_NIGHT, at(7, 23, 30), True, id="next-week"),
    pytest.param(TUE_NIGHT, at(30, 0, 15), False, id="tuesday-early-belongs-to-monday"),
    pytest.param(SUN_NIGHT, at(5, 22, 0), True, id="sunday-start"),
    pytest.param(SUN_NIGHT, at(5, 21, 59, 59), False, id="sunday-before-start"),
    pytest.param(SUN_NIGHT, at(6, 0, 0), True, id="monday-midnight-across-week-end"),
    pytest.param(SUN_NIGHT, at(6, 1, 59, 59), True, id="monday-before-end"),
    pytest.param(SUN_NIGHT, at(6, 2, 0), False, id="monday-end-exclusive"),
    pytest.param(SUN_NIGHT, at(4, 23, 0), False, id="saturday-night"),
    pytest.param(WEEKDAYS, at(3, 2, 0), True, id="friday"),
    pytest.param(WEEKDAYS, at(4, 2, 0), False, id="saturday-not-listed"),
    pytest.param(WEEKDAYS, at(6, 2, 29, 59), True, id="monday-last-second"),
    pytest.param(WEEKDAYS, at(6, 2, 30), False, id="monday-end"),
    pytest.param(WHOLE_MONDAY, at(6, 0, 0), True, id="whole-day-start"),
    pytest.param(WHOLE_MONDAY, at(6, 23, 59, 59), True, id="whole-day-last-second"),
    pytest.param(WHOLE_MONDAY, at(7, 0, 0), False, id="whole-day-end"),
    pytest.param(WHOLE_MONDAY, at(5, 23, 59, 59), False, id="whole-day-before"),
])
def test_in_maintenance_edges(window: MaintenanceWindow, now: datetime, inside: bool) -> None:
    assert (in_maintenance([window], now) == window) is inside
    assert (in_maintenance([window], now) is None) is not inside


def test_no_windows() -> None:
    assert in_maintenance([], NOW) is None


def test_the_window_that_contains_now_is_returned() -> None:
    windows = [WEEKDAYS, TUE_NIGHT, SUN_NIGHT]
    assert in_maintenance(windows, at(1, 0, 30)) == TUE_NIGHT
    assert in_maintenance(windows, at(1, 2, 10)) == WEEKDAYS
    assert in_maintenance(windows, at(6, 1, 0)) == SUN_NIGHT
    assert in_maintenance(windows, at(1, 12, 0)) is None


def test_single_digit_hour() -> None:
    w = win(["wed"], "3:00", 60)
    assert in_maintenance([w], NOW) == w
    assert in_maintenance([w], NOW + timedelta(seconds=60)) is None


def _reference(window: MaintenanceWindow, now: datetime) -> bool:
    """Inside iff, for some listed day, the time since its weekly start is below the duration."""
    hh, mm = (int(x) for x in window.start.split(":"))
    monday = datetime(2024, 4, 29, hh, mm, tzinfo=UTC)  # a Monday, at the window's start time
    for day in window.days:
        start = monday + timedelta(days=DAYS.index(day))
        if (now - start) % WEEK < timedelta(seconds=window.duration):
            return True
    return False


windows_st = st.builds(
    win,
    st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True),
    st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    st.integers(1, 7 * 86400 - 1).map(float),
)
instants_st = st.integers(0, 60 * 86400).map(lambda s: datetime(2024, 3, 1, tzinfo=UTC)
                                             + timedelta(seconds=s))


@FAST
@given(window=windows_st, now=instants_st)
def test_in_maintenance_matches_weekly_reference(window: MaintenanceWindow,
                                                 now: datetime) -> None:
    assert (in_maintenance([window], now) is not None) is _reference(window, now)


@FAST
@given(window=windows_st, now=instants_st)
def test_in_maintenance_repeats_every_week(window: MaintenanceWindow, now: datetime) -> None:
    assert in_maintenance([window], now) == in_maintenance([window], now + WEEK)


def test_in_maintenance_depends_on_the_instant_not_its_offset() -> None:
    inside_utc = at(1, 0, 15)  # Wed 00:15 UTC, inside Tue 23:30 + 2h
    cest = inside_utc.astimezone(timezone(timedelta(hours=2)))  # the same instant, 02:15 +02:00
    assert cest == inside_utc
    assert in_maintenance([TUE_NIGHT], cest) == in_maintenance([TUE_NIGHT], inside_utc)

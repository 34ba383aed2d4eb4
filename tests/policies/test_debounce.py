"""Debouncing: failure/success thresholds turn raw observations into a probe's health."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from unittest.mock import ANY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.debounce import ProbeHealth, debounce
from rollbackd.probes.observation import Observation, Status, Symptom

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
STEP = timedelta(seconds=10)
FAST = settings(max_examples=300, deadline=None, database=None)

_STATUS = {"O": Status.OK, "F": Status.FAIL, "E": Status.ERROR}
_SYMPTOM = {"O": None, "F": Symptom.SERVER_ERROR, "E": Symptom.PROBE_ERROR}


def obs(code: str, i: int, symptom: Symptom | None = None) -> Observation:
    """Observation number `i` of a sequence: O = ok, F = fail, E = the probe itself errored."""
    return Observation(
        probe="health",
        kind="http_health",
        status=_STATUS[code],
        detail=f"{code}#{i}",
        duration=0.01,
        symptom=symptom if symptom is not None else _SYMPTOM[code],
        at=T0 + i * STEP,
    )


def at(i: int) -> datetime:
    return T0 + i * STEP


def run(seq: str, ft: int, st_: int, start: ProbeHealth | None = None) -> ProbeHealth:
    h = start or ProbeHealth()
    for i, code in enumerate(seq):
        h = debounce(h, obs(code, i), ft, st_)
    return h


# seq, failure_threshold, success_threshold, failing, passing, onset (index of the observation,
# None for no onset, ANY where a non-failing probe's onset is not part of the contract)
CASES = [
    pytest.param("", 3, 1, False, False, None, id="fresh-probe-neither-failing-nor-passing"),
    pytest.param("O", 3, 1, False, True, None, id="one-ok-meets-success-threshold-1"),
    pytest.param("O", 3, 2, False, False, None, id="one-ok-below-success-threshold-2"),
    pytest.param("OO", 3, 2, False, True, None, id="two-ok-meet-success-threshold-2"),
    pytest.param("F", 1, 1, True, False, 0, id="failure-threshold-1-fails-at-once"),
    pytest.param("F", 3, 1, False, False, ANY, id="one-fail-below-threshold"),
    pytest.param("FF", 3, 1, False, False, ANY, id="two-fails-below-threshold-3"),
    pytest.param("FFF", 3, 1, True, False, 0, id="three-fails-reach-threshold-onset-first"),
    pytest.param("FFFFF", 3, 1, True, False, 0, id="longer-streak-keeps-first-onset"),
    pytest.param("OOFFF", 3, 1, True, False, 2, id="passing-then-streak-onset-is-streak-start"),
    pytest.param("OOF", 3, 1, False, False, ANY, id="one-fail-unproves-a-passing-probe"),
    pytest.param("FOFF", 3, 1, False, False, ANY, id="ok-breaks-the-failure-streak"),
    pytest.param("FOFFF", 3, 1, True, False, 2, id="onset-is-first-failure-of-new-streak"),
    pytest.param("FFFO", 3, 1, False, True, None, id="recovers-at-success-threshold-1"),
    pytest.param("FFFO", 3, 2, True, False, 0, id="one-ok-below-success-threshold-stays-failing"),
    pytest.param("FFFOO", 3, 2, False, True, None, id="recovers-at-success-threshold-2"),
    pytest.param("FFFOOO", 3, 3, False, True, None, id="recovers-at-success-threshold-3"),
    pytest.param("FFFOOFO", 3, 3, True, False, 0, id="interrupted-recovery-stays-failing"),
    pytest.param("FFFOOF", 3, 2, False, False, ANY, id="after-recovery-one-fail-not-failing"),
    pytest.param("FFFOOFFF", 3, 2, True, False, 5, id="after-recovery-new-onset"),
    pytest.param("FEF", 2, 1, True, False, 0, id="error-does-not-break-failure-streak"),
    pytest.param("FFE", 2, 1, True, False, 0, id="error-keeps-failing-verdict"),
    pytest.param("FFEEEE", 2, 1, True, False, 0, id="many-errors-keep-failing-verdict"),
    pytest.param("OOE", 3, 1, False, True, None, id="error-keeps-passing-verdict"),
    pytest.param("EEE", 1, 1, False, False, None, id="errors-alone-never-fail-a-probe"),
    pytest.param("FFFEO", 3, 1, False, True, None, id="error-then-ok-recovers"),
    pytest.param("FFFOEO", 3, 2, False, True, None, id="error-does-not-break-success-streak"),
    pytest.param(
        "FFFOF",
        3,
        2,
        True,
        False,
        0,
        id="blip-of-ok-while-failing-keeps-onset",
    ),
    pytest.param(
        "FFFOEF",
        3,
        2,
        True,
        False,
        0,
        id="blip-of-ok-and-error-while-failing-keeps-onset",
    ),
]


@pytest.mark.parametrize(("seq", "ft", "st_", "failing", "passing", "onset"), CASES)
def test_debounce_sequences(
    seq: str, ft: int, st_: int, failing: bool, passing: bool, onset: object
) -> None:
    h = run(seq, ft, st_)
    assert h.failing is failing
    assert h.passing is passing
    expected_onset = at(onset) if isinstance(onset, int) else onset
    assert h.onset == expected_onset
    if seq:
        assert h.last == obs(seq[-1], len(seq) - 1)


@pytest.mark.parametrize(
    ("seq", "failures", "successes"),
    [
        pytest.param("", 0, 0, id="fresh"),
        pytest.param("FF", 2, 0, id="failures-count-up"),
        pytest.param("FFO", 0, 1, id="ok-resets-failures"),
        pytest.param("OOF", 1, 0, id="fail-resets-successes"),
        pytest.param("FEFE", 2, 0, id="errors-do-not-count"),
        pytest.param("OEOE", 0, 2, id="errors-do-not-reset-successes"),
    ],
)
def test_counters(seq: str, failures: int, successes: int) -> None:
    h = run(seq, 3, 2)
    assert (h.failures, h.successes) == (failures, successes)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="fresh"),
        pytest.param("F", id="below-threshold"),
        pytest.param("FFF", id="failing"),
        pytest.param("FFFO", id="failing-one-ok"),
        pytest.param("OO", id="passing"),
        pytest.param("FFFOO", id="recovered"),
    ],
)
def test_error_changes_nothing_but_last(prefix: str) -> None:
    before = run(prefix, 3, 2)
    err = obs("E", 99)
    after = debounce(before, err, 3, 2)
    assert after == replace(before, last=err)


def test_symptom_is_the_latest_failures_and_cleared_on_recovery() -> None:
    h = ProbeHealth()
    h = debounce(h, obs("F", 0, Symptom.UNREACHABLE), 2, 2)
    h = debounce(h, obs("F", 1, Symptom.TIMEOUT), 2, 2)
    assert h.failing and h.symptom is Symptom.TIMEOUT
    h = debounce(h, obs("E", 2), 2, 2)
    assert h.symptom is Symptom.TIMEOUT, "a probe error is not evidence about the target"
    h = debounce(h, obs("O", 3), 2, 2)
    assert h.failing and h.symptom is Symptom.TIMEOUT, "below success threshold: still failing"
    h = debounce(h, obs("O", 4), 2, 2)
    assert not h.failing and h.passing and h.symptom is None and h.onset is None


def test_debounce_does_not_mutate_its_input() -> None:
    before = run("FF", 3, 1)
    snapshot = replace(before)
    debounce(before, obs("F", 2), 3, 1)
    assert before == snapshot


@FAST
@given(
    seq=st.lists(st.sampled_from("OFE"), max_size=60),
    ft=st.integers(min_value=1, max_value=6),
    st_=st.integers(min_value=1, max_value=6),
)
def test_never_failing_without_threshold_consecutive_failures(
    seq: list[str], ft: int, st_: int
) -> None:
    h = ProbeHealth()
    streak = 0  # consecutive failures; probe errors neither count nor break the streak
    for i, code in enumerate(seq):
        before = h
        h = debounce(h, obs(code, i), ft, st_)
        if code == "F":
            streak += 1
        elif code == "O":
            streak = 0
        if not before.failing and h.failing:
            assert code == "F"
            assert streak >= ft
        if streak >= ft:
            assert h.failing
        assert not (h.failing and h.passing)
        if h.failing:
            assert h.onset is not None and h.onset <= h.last.at  # type: ignore[union-attr]
        if code == "E":
            assert h == replace(before, last=h.last)

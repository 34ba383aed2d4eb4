"""The known-good ledger: promotion after continuous health, and choosing a rollback target."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.ledger import LedgerEntry, observe, rollback_target

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
STABLE = 600.0
FAST = settings(max_examples=300, deadline=None, database=None)


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def replay(
    steps: list[tuple[float, bool]], entry: LedgerEntry | None = None, stable: float = STABLE
) -> LedgerEntry:
    e = entry or LedgerEntry("v1", first_seen=T0)
    for offset, passing in steps:
        e = observe(e, passing, t(offset), stable)
    return e


# evaluations (seconds after T0, all probes passing?), expected known_good_at, healthy_since
PROMOTION = [
    pytest.param([], None, None, id="never-observed"),
    pytest.param([(0, True)], None, 0, id="first-pass-starts-the-clock"),
    pytest.param([(0, True), (599, True)], None, 0, id="one-second-short"),
    pytest.param([(0, True), (599.999, True)], None, 0, id="a-millisecond-short"),
    pytest.param([(0, True), (600, True)], 600, 0, id="exactly-stable-after"),
    pytest.param([(0, True), (300, True), (900, True)], 900, 0, id="first-evaluation-past"),
    pytest.param([(0, True), (600, True), (1200, True)], 600, 0, id="promotion-time-kept"),
    pytest.param([(0, False), (600, False)], None, None, id="always-failing"),
    pytest.param([(0, False), (10, True), (610, True)], 610, 10, id="clock-starts-at-first-pass"),
    pytest.param([(0, True), (300, False), (600, True)], None, 600, id="failure-resets-clock"),
    pytest.param(
        [(0, True), (300, False), (600, True), (1199, True)], None, 600, id="reset-one-second-short"
    ),
    pytest.param(
        [(0, True), (300, False), (600, True), (1200, True)], 1200, 600, id="reset-then-promoted"
    ),
    pytest.param(
        [(0, True), (599, True), (599.5, False), (600, True)], None, 600, id="late-failure-resets"
    ),
    pytest.param(
        [(0, True), (600, True), (700, False)], 600, None, id="failure-after-promotion-keeps-it"
    ),
    pytest.param(
        [(0, True), (600, True), (700, False), (800, True)], 600, 800, id="promotion-not-redone"
    ),
]


@pytest.mark.parametrize(("steps", "known_good_at", "healthy_since"), PROMOTION)
def test_promotion(
    steps: list[tuple[float, bool]], known_good_at: float | None, healthy_since: float | None
) -> None:
    e = replay(steps)
    assert e.known_good_at == (None if known_good_at is None else t(known_good_at))
    assert e.healthy_since == (None if healthy_since is None else t(healthy_since))
    assert e.known_good is (known_good_at is not None)
    assert e.version == "v1" and e.first_seen == T0


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([(0, True), (600, True)], id="stable-after"),
        pytest.param([(0, True), (100_000, True)], id="long-after"),
        pytest.param([(0, True), (300, False), (400, True), (100_000, True)], id="after-reset"),
    ],
)
def test_bad_version_never_becomes_known_good(steps: list[tuple[float, bool]]) -> None:
    bad = LedgerEntry("v1", first_seen=T0, bad_at=t(-1))
    e = replay(steps, bad)
    assert e.known_good_at is None
    assert not e.known_good
    assert e.bad_at == t(-1)


def test_known_good_marked_bad_later_is_not_known_good() -> None:
    e = replay([(0, True), (600, True)])
    assert e.known_good
    marked = LedgerEntry(e.version, e.first_seen, e.healthy_since, e.known_good_at, bad_at=t(900))
    assert not marked.known_good
    assert not replay([(1000, True), (5000, True)], marked).known_good


@pytest.mark.parametrize("stable", [1.0, 30.0, 3600.0])
def test_promotion_uses_the_configured_stable_after(stable: float) -> None:
    assert replay([(0, True), (stable - 0.5, True)], stable=stable).known_good_at is None
    assert replay([(0, True), (stable, True)], stable=stable).known_good_at == t(stable)


# ---------------------------------------------------------------------------------------------
# rollback_target


def entry(version: str, seen: float, good: bool = True, bad: bool = False) -> LedgerEntry:
    return LedgerEntry(
        version,
        first_seen=t(seen),
        healthy_since=t(seen) if good else None,
        known_good_at=t(seen + STABLE) if good else None,
        bad_at=t(seen + 2 * STABLE) if bad else None,
    )


A = entry("a", 0)
B = entry("b", 1000)
C_BAD = entry("c", 2000, bad=True)
D = entry("d", 3000)  # the usual current version
E_NEWER = entry("e", 4000)
F_UNPROVEN = entry("f", 2500, good=False)
LEDGER = [A, B, C_BAD, F_UNPROVEN, D, E_NEWER]

TARGETS = [
    pytest.param(LEDGER, "d", "b", id="newest-older-known-good-skips-bad-and-unproven"),
    pytest.param(LEDGER, "e", "d", id="current-newest-picks-previous-known-good"),
    pytest.param(LEDGER, "b", "a", id="older-current"),
    pytest.param(LEDGER, "c", "b", id="bad-current"),
    pytest.param(LEDGER, "a", None, id="oldest-current-nothing-older"),
    pytest.param([A, D], "d", "a", id="two-versions"),
    pytest.param([D], "d", None, id="only-the-current"),
    pytest.param([], "d", None, id="empty-ledger"),
    pytest.param([C_BAD, D], "d", None, id="only-a-bad-older-one"),
    pytest.param([F_UNPROVEN, D], "d", None, id="only-an-unproven-older-one"),
    pytest.param([A, E_NEWER, D], "d", "a", id="never-a-newer-one"),
    pytest.param([entry("a", 0, bad=True), entry("b", 10, bad=True), D], "d", None, id="all-bad"),
    pytest.param([A, B], None, "b", id="no-current-version-newest-known-good"),
]


@pytest.mark.parametrize(("entries", "current", "expected"), TARGETS)
def test_rollback_target(
    entries: list[LedgerEntry], current: str | None, expected: str | None
) -> None:
    got = rollback_target(entries, current)
    assert (got.version if got else None) == expected
    shuffled = entries[:]
    random.Random(7).shuffle(shuffled)
    got2 = rollback_target(shuffled, current)
    assert (got2.version if got2 else None) == expected, "the ledger's order must not matter"


def test_rollback_target_does_not_mutate_ledger() -> None:
    entries = LEDGER[:]
    rollback_target(entries, "d")
    assert entries == LEDGER


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[list[LedgerEntry], str | None]:
    n = draw(st.integers(min_value=0, max_value=8))
    seen = draw(st.lists(st.integers(0, 100_000), min_size=n, max_size=n, unique=True))
    entries = []
    for i, s in enumerate(seen):
        good = draw(st.booleans())
        bad = draw(st.booleans())
        entries.append(entry(f"v{i}", s, good=good, bad=bad))
    choices: list[str | None] = [e.version for e in entries] + [None, "unknown"]
    current = draw(st.sampled_from(choices))
    return entries, current


@FAST
@given(ledgers())
def test_target_is_known_good_older_than_current_and_the_newest_such(
    case: tuple[list[LedgerEntry], str | None],
) -> None:
    entries, current = case
    cur = next((e for e in entries if e.version == current), None)
    eligible = [
        e
        for e in entries
        if e.known_good and e.version != current and (cur is None or e.first_seen < cur.first_seen)
    ]
    target = rollback_target(entries, current)
    if target is None:
        assert eligible == []
        return
    assert target in entries
    assert target.known_good
    assert target.bad_at is None
    assert target.version != current
    if cur is not None:
        assert target.first_seen < cur.first_seen
    assert all(e.first_seen <= target.first_seen for e in eligible)

"""decide(): every policy gate, the plan's shape, and limits that hold over a stream of incidents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, Decision, Gate, History, decide
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.plans import CHECKLIST, VERIFICATION, Capability, StepSpec
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None, database=None)

GOOD = "3f5e2c1a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f"  # 40 hex: a git commit
CURRENT = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
OLDER = "1111111111111111111111111111111111111111"
BACKEND = (
    StepSpec("git_checkout", idempotent=False, timeout=120),
    StepSpec("restart_service", idempotent=True, timeout=60),
)
CHECKLIST_NAMES = [
    "capture_evidence",
    "notify",
    "backup_current",
    "record_incident",
    "verify_target",
]
EVIDENCE = "health 503 from /health"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


LEDGER = [
    LedgerEntry(OLDER, ago(7 * 86400), ago(7 * 86400), ago(6 * 86400)),
    # known-good since 02:15 the day before NOW
    LedgerEntry(GOOD, ago(2 * 86400), ago(2 * 86400), datetime(2024, 4, 30, 2, 15, tzinfo=UTC)),
    LedgerEntry(CURRENT, ago(3600)),
]
NO_TARGET = [LedgerEntry(CURRENT, ago(3600))]
DEFAULT = PolicySettings()  # window 3600, max 3, cooldown 300, breaker reset 1800


def breaker_opened(seconds_ago: float) -> Breaker:
    return Breaker(BreakerMode.OPEN, (ago(seconds_ago + 10), ago(seconds_ago)), ago(seconds_ago))


def run(
    policy: PolicySettings = DEFAULT,
    history: History | None = None,
    ledger: list[LedgerEntry] | None = None,
    current: str | None = CURRENT,
    now: datetime = NOW,
    backend: tuple[StepSpec, ...] = BACKEND,
) -> Decision:
    facts = Facts(
        current_version=current,
        ledger=tuple(LEDGER if ledger is None else ledger),
        capabilities={Capability.DEPLOYMENT_ROLLBACK: backend} if backend else {},
    )
    return decide(IncidentClass.APP_DOWN, EVIDENCE, facts, history or History(), now, policy)


def pol(**kw: Any) -> PolicySettings:
    return PolicySettings(**kw)


# policy, history, ledger, expected action, fragments the reason must contain
GATES = [
    pytest.param(
        DEFAULT, History(), NO_TARGET, Action.ESCALATE,
        ["no known-good version older than the current one"], id="no-known-good-target",
    ),
    pytest.param(
        DEFAULT, History(), [], Action.ESCALATE, ["no known-good"], id="empty-ledger",
    ),
    pytest.param(
        DEFAULT, History(), [LedgerEntry(GOOD, ago(99)), LedgerEntry(CURRENT, ago(30))],
        Action.ESCALATE, ["no known-good"], id="older-version-not-yet-known-good",
    ),
    pytest.param(
        DEFAULT, History(breaker=breaker_opened(60)), LEDGER, Action.ESCALATE,
        ["open since"], id="breaker-open",
    ),
    pytest.param(
        DEFAULT, History(breaker=breaker_opened(1799)), LEDGER, Action.ESCALATE,
        ["open since"], id="breaker-open-one-second-before-reset",
    ),
    pytest.param(
        DEFAULT, History(breaker=breaker_opened(1800)), LEDGER, Action.EXECUTE,
        ["half-open", "3f5e2c1"], id="breaker-half-open-after-reset",
    ),
    pytest.param(
        DEFAULT, History(breaker=Breaker(BreakerMode.HALF_OPEN, (), ago(5000))), LEDGER,
        Action.EXECUTE, ["half-open"], id="breaker-stored-half-open",
    ),
    pytest.param(
        DEFAULT, History(breaker=Breaker(BreakerMode.CLOSED, (ago(10),), None)), LEDGER,
        Action.EXECUTE, ["known-good since"], id="breaker-closed-with-one-failure",
    ),
    pytest.param(
        pol(auto_rollback=False), History(), LEDGER, Action.ESCALATE,
        ["automatic rollback is off"], id="auto-rollback-off",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(3000), ago(2000), ago(1000))), LEDGER, Action.ESCALATE,
        ["3 automatic rollbacks in the last 3600s (limit 3)"], id="max-rollbacks-in-window",
    ),
    pytest.param(
        pol(max_rollbacks=1, cooldown=1), History(rollbacks=(ago(3599),)), LEDGER,
        Action.ESCALATE, ["1 automatic rollbacks in the last 3600s (limit 1)"],
        id="max-rollbacks-1-one-second-inside-window",
    ),
    pytest.param(
        pol(max_rollbacks=1, cooldown=1), History(rollbacks=(ago(3600),)), LEDGER,
        Action.EXECUTE, ["known-good since"], id="rollback-exactly-window-ago-does-not-count",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(9000), ago(8000), ago(7000), ago(6000))), LEDGER,
        Action.EXECUTE, ["known-good since"], id="old-rollbacks-outside-window",
    ),
    pytest.param(
        pol(max_rollbacks=0), History(), LEDGER, Action.ESCALATE,
        ["0 automatic rollbacks", "(limit 0)"], id="max-rollbacks-zero",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(60),)), LEDGER, Action.ESCALATE,
        ["in cooldown after the rollback at 02:59"], id="cooldown",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(299),)), LEDGER, Action.ESCALATE,
        ["in cooldown"], id="cooldown-one-second-left",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(300),)), LEDGER, Action.EXECUTE,
        ["known-good since"], id="cooldown-just-over",
    ),
    pytest.param(
        DEFAULT, History(rollbacks=(ago(2000), ago(100))), LEDGER, Action.ESCALATE,
        ["in cooldown after the rollback at 02:58"], id="cooldown-counts-from-latest",
    ),
    pytest.param(
        pol(window=600, cooldown=900), History(rollbacks=(ago(700),)), LEDGER, Action.ESCALATE,
        ["in cooldown"], id="cooldown-longer-than-window",
    ),
    pytest.param(
        pol(dry_run=True), History(), LEDGER, Action.DRY_RUN, ["rolling back to 3f5e2c1"],
        id="dry-run",
    ),
    pytest.param(
        pol(dry_run=True), History(breaker=breaker_opened(1800)), LEDGER, Action.DRY_RUN,
        ["half-open"], id="dry-run-half-open",
    ),
    pytest.param(
        DEFAULT, History(), LEDGER, Action.EXECUTE,
        ["app_down", EVIDENCE, "rolling back to 3f5e2c1 (known-good since 02:15)"],
        id="normal",
    ),
    # precedence between gates: the first in DESIGN order wins
    pytest.param(
        pol(dry_run=True, auto_rollback=False), History(breaker=breaker_opened(60)), NO_TARGET,
        Action.ESCALATE, ["no known-good"], id="no-target-before-everything",
    ),
    pytest.param(
        pol(dry_run=True, auto_rollback=False), History(breaker=breaker_opened(60)), LEDGER,
        Action.ESCALATE, ["open since"], id="breaker-before-auto-rollback",
    ),
    pytest.param(
        pol(dry_run=True, auto_rollback=False), History(rollbacks=(ago(1),)), LEDGER,
        Action.ESCALATE, ["automatic rollback is off"], id="auto-rollback-before-limits",
    ),
    pytest.param(
        pol(dry_run=True, max_rollbacks=1), History(rollbacks=(ago(1),)), LEDGER,
        Action.ESCALATE, ["(limit 1)"], id="limit-before-cooldown-and-dry-run",
    ),
    pytest.param(
        pol(dry_run=True), History(rollbacks=(ago(1),)), LEDGER,
        Action.ESCALATE, ["in cooldown"], id="cooldown-before-dry-run",
    ),
]


@pytest.mark.parametrize(("policy", "history", "ledger", "action", "fragments"), GATES)
def test_gates(
    policy: PolicySettings,
    history: History,
    ledger: list[LedgerEntry],
    action: Action,
    fragments: list[str],
) -> None:
    d = run(policy, history, ledger)
    assert d.action is action, d.reason
    assert d.incident_class is IncidentClass.APP_DOWN
    for fragment in fragments:
        assert fragment in d.reason
    assert d.reason.startswith(f"app_down: {EVIDENCE}; ")
    assert "\n" not in d.reason
    if action is Action.ESCALATE:
        # An escalation may carry the plan that would have run (for the mail), never more.
        assert d.plan is None or d.plan.target_version == GOOD
    else:
        assert d.plan is not None
        assert d.plan.target_version == GOOD
        assert d.plan.current_version == CURRENT
    assert ("half-open" in d.reason) is ("half-open" in fragments)
    # Which limit stopped it is typed, for the mail: each limit's sentence names its gate.
    expected = Gate.RATE_LIMIT if "automatic rollbacks in the last" in d.reason \
        else Gate.COOLDOWN if "in cooldown" in d.reason \
        else Gate.BREAKER_OPEN if "circuit breaker" in d.reason and action is Action.ESCALATE \
        else None
    assert d.gate is expected, d.reason


def test_normal_execute_plan_and_reason() -> None:
    d = run()
    assert d.action is Action.EXECUTE
    assert d.plan is not None
    names = d.plan.step_names
    assert names[: len(CHECKLIST_NAMES)] == CHECKLIST_NAMES
    assert names[len(CHECKLIST_NAMES) : -1] == ["git_checkout", "restart_service"]
    assert names[-1] == "verify"
    assert d.plan.kind == "deployment_rollback"
    assert d.plan.incident_class is IncidentClass.APP_DOWN
    body = d.plan.steps[len(CHECKLIST) : -len(VERIFICATION)]
    assert [(s.name, s.idempotent, s.timeout) for s in body] == [
        (s.name, s.idempotent, s.timeout) for s in BACKEND]
    assert all(s.component == "deployment" for s in body)
    # verification gets at least the configured time for the probes to pass again
    assert d.plan.steps[-1].timeout >= DEFAULT.verify_timeout
    assert "3f5e2c1" in d.reason and GOOD not in d.reason
    assert "known-good since 02:15" in d.reason
    assert "half-open" not in d.reason


def test_reason_keeps_a_short_version_whole() -> None:
    ledger = [
        LedgerEntry("v1.4.2", ago(86400), ago(86400), datetime(2024, 4, 30, 4, 5, tzinfo=UTC)),
        LedgerEntry("v1.5.0", ago(60)),
    ]
    d = run(ledger=ledger, current="v1.5.0")
    assert d.action is Action.EXECUTE
    assert "rolling back to v1.4.2 (known-good since 04:05)" in d.reason


def test_target_skips_bad_and_newer_versions() -> None:
    bad = "b" * 40
    newer = "e" * 40
    ledger = [
        *LEDGER,
        # known-good once, then marked bad; newer than GOOD, older than CURRENT
        LedgerEntry(bad, ago(7200), ago(7200), ago(6000), bad_at=ago(4000)),
        # known-good but first seen after the current version
        LedgerEntry(newer, ago(60), ago(60), ago(30)),
    ]
    d = run(ledger=ledger)
    assert d.action is Action.EXECUTE
    assert d.plan is not None and d.plan.target_version == GOOD


# ---------------------------------------------------------------------------------------------
# properties

policies_st = st.builds(
    PolicySettings,
    auto_rollback=st.booleans(),
    dry_run=st.booleans(),
    max_rollbacks=st.integers(0, 5),
    window=st.integers(1, 20_000).map(float),
    cooldown=st.integers(1, 20_000).map(float),
    breaker_failures=st.integers(1, 4),
    breaker_reset=st.integers(1, 20_000).map(float),
    verify_timeout=st.integers(1, 600).map(float),
)

step_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
backends_st = st.lists(
    st.builds(StepSpec, name=step_names, idempotent=st.booleans(), destructive=st.booleans()),
    max_size=4,
).map(tuple)


@st.composite
def ledgers_st(draw: st.DrawFn) -> list[LedgerEntry]:
    n = draw(st.integers(0, 5))
    seen = draw(st.lists(st.integers(60, 10**6), min_size=n, max_size=n, unique=True))
    out = []
    for i, s in enumerate(seen):
        good = draw(st.booleans())
        bad = draw(st.booleans())
        out.append(
            LedgerEntry(
                f"{i:040x}",
                ago(s),
                ago(s) if good else None,
                ago(s - 30) if good else None,
                ago(10) if bad else None,
            )
        )
    out.append(LedgerEntry(CURRENT, ago(30)))
    return out


breakers_st = st.one_of(
    st.just(Breaker()),
    st.builds(
        Breaker,
        mode=st.sampled_from(list(BreakerMode)),
        failures=st.lists(st.integers(0, 50_000).map(ago), max_size=3).map(tuple),
        opened_at=st.one_of(st.none(), st.integers(0, 50_000).map(ago)),
    ),
)
histories_st = st.builds(
    History,
    rollbacks=st.lists(st.integers(0, 50_000).map(ago), max_size=6).map(tuple),
    breaker=breakers_st,
)


@FAST
@given(
    policy=st.builds(
        PolicySettings,
        max_rollbacks=st.integers(0, 4),
        window=st.integers(1, 7200).map(float),
        cooldown=st.integers(1, 7200).map(float),
    ),
    gaps=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
)
def test_never_more_than_max_rollbacks_in_any_window(
    policy: PolicySettings, gaps: list[int]
) -> None:
    executed: list[datetime] = []
    now = NOW
    for gap in gaps:
        now += timedelta(seconds=gap)
        d = run(policy, History(rollbacks=tuple(executed)), now=now)
        if d.action is Action.EXECUTE:
            executed.append(now)  # the daemon journals each EXECUTE as a rollback start
    window = timedelta(seconds=policy.window)
    for end in executed:  # every window (end - window, end] that could hold the most of them
        assert sum(1 for x in executed if end - window < x <= end) <= policy.max_rollbacks
    # the cooldown separates consecutive rollbacks, even when it is longer than the window
    cooldown = timedelta(seconds=policy.cooldown)
    assert all(b - a >= cooldown for a, b in zip(executed, executed[1:], strict=False))


@FAST
@given(
    policy=policies_st,
    history=histories_st,
    ledger=ledgers_st(),
    backend=backends_st,
    data=st.data(),
)
def test_open_breaker_within_reset_never_acts(
    policy: PolicySettings,
    history: History,
    ledger: list[LedgerEntry],
    backend: tuple[StepSpec, ...],
    data: st.DataObject,
) -> None:
    opened = data.draw(st.integers(0, int(policy.breaker_reset) - 1), label="opened_s_ago")
    breaker = Breaker(BreakerMode.OPEN, history.breaker.failures, ago(opened))
    d = run(policy, History(history.rollbacks, breaker), ledger, backend=backend)
    assert d.action is Action.ESCALATE


@FAST
@given(policy=policies_st, history=histories_st, ledger=ledgers_st(), backend=backends_st)
def test_dry_run_never_executes(
    policy: PolicySettings,
    history: History,
    ledger: list[LedgerEntry],
    backend: tuple[StepSpec, ...],
) -> None:
    dry = policy.model_copy(update={"dry_run": True})
    d = run(dry, history, ledger, backend=backend)
    assert d.action is not Action.EXECUTE
    assert d.action in (Action.DRY_RUN, Action.ESCALATE)


@FAST
@given(policy=policies_st, history=histories_st, ledger=ledgers_st(), backend=backends_st)
def test_every_plan_starts_with_checklist_and_ends_with_verification(
    policy: PolicySettings,
    history: History,
    ledger: list[LedgerEntry],
    backend: tuple[StepSpec, ...],
) -> None:
    d = run(policy, history, ledger, backend=backend)
    if d.plan is None:
        assert d.action is Action.ESCALATE
        return
    steps = d.plan.steps
    assert steps[: len(CHECKLIST)] == CHECKLIST
    tail = steps[len(steps) - len(VERIFICATION) :]
    assert [s.name for s in tail] == [s.name for s in VERIFICATION]
    body = steps[len(CHECKLIST) : len(steps) - len(VERIFICATION)]
    assert [s.name for s in body] == [s.name for s in backend]
    assert d.plan.target_version != CURRENT
    assert any(e.version == d.plan.target_version and e.known_good for e in ledger)

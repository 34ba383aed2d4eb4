"""Breaker, limit and override state live in the journal: a restarted daemon decides the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rollbackd.daemon.journal import Journal
from rollbackd.daemon.monitor import journal_history
from rollbackd.policies.breaker import record_failure
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, decide
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind
from rollbackd.policies.plans import Capability, Component, StepSpec
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts

GOOD, BAD = "a" * 40, "b" * 40
STEPS = (StepSpec("git_checkout", True, component=Component.DEPLOYMENT),)
POLICY = PolicySettings(max_rollbacks=2, window=3600, cooldown=60, breaker_failures=2)


def facts(now: datetime) -> Facts:
    return Facts(current_version=BAD, ledger=(
        LedgerEntry(GOOD, now - timedelta(days=2), None, now - timedelta(days=1)),
        LedgerEntry(BAD, now - timedelta(minutes=5)),
    ), capabilities={Capability.DEPLOYMENT_ROLLBACK: STEPS})


def decisions(journal: Journal, now: datetime) -> list[tuple[str, str]]:
    out = []
    for minutes in (0, 2, 10, 40, 70):
        at = now + timedelta(minutes=minutes)
        d = decide(IncidentClass.APP_DOWN, "health down", facts(at),
                   journal_history(journal, "web"), at, POLICY, "web")
        out.append((d.action.value, d.reason))
    return out


def test_breaker_limits_and_overrides_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    now = datetime.now(UTC)
    j = Journal(path)
    # Two automatic rollbacks in the window, the second one failed twice -> breaker open.
    for _ in range(2):
        inc = j.incidents.open("web", "app_down", "down", now, {})
        j.incidents.update(inc, state="remediating", started_at=now - timedelta(minutes=1))
    b = j.breakers.get("web", "deployment_rollback")
    for _ in range(2):
        b = record_failure(b, now, 2, 3600, 1800)
    j.breakers.save("web", "deployment_rollback", b)
    j.overrides.add(Override(OverrideKind.SILENCE, "web", now + timedelta(hours=1), "deploy"))
    before = decisions(j, now)
    j.close()

    reopened = Journal(path)
    after = decisions(reopened, now)
    reopened.close()
    assert after == before
    assert before[0][0] == Action.ESCALATE
    assert "open since" in before[0][1]
    # 40 minutes on the breaker is half-open, but the two rollbacks still fill the window.
    assert "automatic rollbacks" in before[3][1]
    # 70 minutes on, both limits have passed: one half-open attempt is allowed.
    assert before[4][0] == Action.EXECUTE and "half-open" in before[4][1]

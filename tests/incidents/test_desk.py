"""The incident desk against a real journal, a real outbox and a real SMTP server: the refusals
and exactly-once rules that live where the parts meet."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.incidents.recovery import hold_interrupted
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.refusal import Refused
from rollbackd.daemon.runner import evidence_changes
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, Decision, Gate
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.lifecycle import State
from rollbackd.policies.plans import (
    LOCKDOWN_CLASS,
    Capability,
    Component,
    Plan,
    PlanKind,
    StepSpec,
    build_plan,
    plan_to_dict,
)
from rollbackd.policies.settings import PolicySettings
from tests.escalation.conftest import FAR_FUTURE, MailServer, make_config

GOOD = "a" * 40
BAD = "b" * 40


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def monitor(journal: Journal, tmp_path: Path, port: int = 9,
            policy: PolicySettings | None = None) -> TargetMonitor:
    cfg = make_config(port)
    return TargetMonitor("web", cfg.targets["web"], policy or PolicySettings(verify_timeout=1.0),
                         journal,
                         Outbox(journal, cfg), Metrics(CollectorRegistry()), tmp_path / "reports")


def waiting_rollback(journal: Journal) -> int:
    """An app_down incident whose deployment rollback to GOOD waits for approval."""
    plan = build_plan(PlanKind.DEPLOYMENT_ROLLBACK, IncidentClass.APP_DOWN,
                      [(Capability.DEPLOYMENT_ROLLBACK, (StepSpec("git_checkout", False),))],
                      {Component.DEPLOYMENT: GOOD}, {Component.DEPLOYMENT: BAD}, 1.0)
    inc = journal.incidents.open("web", "app_down", "app_down: health fails", None, {},
                                 state=State.AWAITING_APPROVAL.value)
    journal.incidents.update(inc, "planned", "", plan=json.dumps(plan_to_dict(plan)))
    earlier = now_utc() - timedelta(days=2)
    journal.ledger.save("web", LedgerEntry(GOOD, earlier, earlier, earlier + timedelta(hours=1)))
    return inc


async def failing(m: TargetMonitor) -> None:
    """The health probe (nothing listens on port 9) past its failure threshold: app_down."""
    for _ in range(m.settings["health"].failure_threshold):
        await m.confirm()


def steps(journal: Journal, inc: int) -> dict[str, tuple[str, str]]:
    return {s.name: (s.state, s.detail) for s in journal.steps.of(inc)}


async def test_a_target_marked_bad_after_the_plan_was_made_is_refused(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    # Between the decision (the stored plan) and its approval, a person marks GOOD bad.
    journal.ledger.mark_bad("web", GOOD, "leaks memory (found by hand)")
    await failing(m)
    await m.desk.approve(inc, "uid 0")
    assert m.desk.task is not None
    assert await m.desk.task is False
    state, detail = steps(journal, inc)["verify_target"]
    assert state == "failed"
    assert detail.startswith(f"refused: rollback target {GOOD[:12]} was marked bad")
    assert "leaks memory" in detail
    assert "git_checkout" not in steps(journal, inc)  # nothing after the refusal ran
    found = journal.incidents.get(inc)
    assert found is not None and found.state == State.ESCALATED


async def test_the_same_plan_passes_the_check_when_the_target_stays_known_good(
        journal: Journal, tmp_path: Path) -> None:
    """The control for the refusal above: only the bad mark makes verify_target fail."""
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    await failing(m)
    await m.desk.approve(inc, "uid 0")
    assert m.desk.task is not None
    await m.desk.task
    assert steps(journal, inc)["verify_target"][0] == "done"
    # No deployment executor is configured here: the first step that needs one fails.
    assert steps(journal, inc)["git_checkout"][0] == "failed"


async def test_an_approval_runs_nothing_while_the_class_is_not_confirmed(
        journal: Journal, tmp_path: Path) -> None:
    """Approved later, the plan runs only if a fresh run of every probe still shows its class:
    here the health probe has failed once, below its threshold: no class yet."""
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    with pytest.raises(Refused) as refused:
        await m.desk.approve(inc, "uid 0")
    assert refused.value.code == "not_confirmed"
    assert "the plan was not run" in str(refused.value)
    assert m.desk.task is None and journal.steps.of(inc) == []
    found = journal.incidents.get(inc)
    assert found is not None and found.state == State.AWAITING_APPROVAL
    assert journal.incidents.timeline(inc)[-1][1] == "not_confirmed"


async def test_approve_and_deny_refuse_what_is_not_waiting(journal: Journal,
                                                           tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    assert m.desk.deny(inc, "uid 0") is State.DENIED
    with pytest.raises(Refused) as again:
        await m.desk.approve(inc, "uid 0")
    assert again.value.code == "bad_state"
    with pytest.raises(Refused) as twice:
        m.desk.deny(inc, "uid 0")
    assert twice.value.code == "bad_state"
    with pytest.raises(Refused) as other:
        m.desk.deny(inc + 1000, "uid 0")
    assert other.value.code == "not_found"


async def test_a_held_incident_is_abandoned_by_deny_saying_what_was_left(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    journal.incidents.update(inc, state=State.REMEDIATING.value)
    done = journal.steps.started(inc, 0, "capture_evidence", True)
    journal.steps.finished(done, True, 0.1, "ok")
    journal.steps.started(inc, 1, "git_checkout", False)  # a crash cut it off
    hold_interrupted(journal, m.outbox, tmp_path / "reports")
    assert m.desk.deny(inc, "uid 1000") is State.ABANDONED
    found = journal.incidents.get(inc)
    assert found is not None and found.state == State.ABANDONED and found.closed_at
    last = journal.incidents.timeline(inc)[-1]
    assert last[1] == "abandoned"
    assert "after: capture_evidence; not finished: git_checkout" in last[2]


async def test_a_held_incident_is_mailed_once_per_recipient_across_restarts(
        journal: Journal, tmp_path: Path, mail_server: MailServer) -> None:
    mail_server.start()
    cfg = make_config(mail_server.port)
    inc = journal.incidents.open("web", "auth_broken", "auth_broken: login 401", None, {},
                                 state=State.OPEN.value)
    journal.incidents.update(inc, state=State.REMEDIATING.value)
    journal.steps.started(inc, 0, "alembic_downgrade", False)
    # The first start-up holds it; a crash before the mail went out and two more starts
    # replay the recovery: the held mail is the same mail every time.
    for _ in range(3):
        outbox = Outbox(journal, cfg)
        hold_interrupted(journal, outbox, tmp_path / "reports")
        hold_interrupted(journal, outbox, tmp_path / "reports")  # nothing left running: no-op
    assert await Outbox(journal, cfg).flush(now=FAR_FUTURE) == 1
    held = [d for d in mail_server.deliveries if "HELD" in str(d.msg["Subject"])]
    per_recipient = Counter(r for d in held for r in d.rcpts)
    # auth_broken routes to the database people and on-call, each exactly once.
    assert per_recipient == {"dba@example.com": 1, "oncall@example.com": 1}
    assert len({str(d.msg["Message-ID"]) for d in held}) == 1
    body = held[0].msg.get_body(("plain",)).get_content()
    assert f"rollbackctl approve {inc}" in body and f"rollbackctl deny {inc}" in body


async def test_a_removed_target_closes_its_waiting_incident_once(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    assert m.desk.close_removed("its target was removed from the config") == inc
    assert m.desk.close_removed("its target was removed from the config") == 0
    found = journal.incidents.get(inc)
    assert found is not None and found.state == State.ABANDONED
    closed = [r for r in journal.db.execute("SELECT subject FROM outbox")
              if "closed" in r[0]]
    assert len(closed) == 1


@pytest.mark.parametrize(("gate", "cto"), [
    pytest.param(Gate.RATE_LIMIT, True, id="rate-limit-tells-the-top"),
    pytest.param(Gate.BREAKER_OPEN, True, id="open-breaker-tells-the-top"),
    pytest.param(Gate.COOLDOWN, False, id="cooldown-does-not"),
    pytest.param(None, False, id="no-limit"),
])
def test_a_limit_that_refuses_a_rollback_mails_the_emergency_contact_at_once(
        journal: Journal, gate: Gate | None, cto: bool) -> None:
    outbox = Outbox(journal, make_config(9))
    inc = journal.incidents.open("web", "app_down", "app_down: x", None, {}, state="escalated")
    decision = Decision(Action.ESCALATE, IncidentClass.APP_DOWN, "app_down: x; limit", None, gate)
    to = outbox.send(notices.decided("web", inc, decision, "escalated", approval=False,
                                     history=["2026-12-07 03:00:00 UTC, incident 1 ..."]))
    assert ("cto@example.com" in to) is cto
    assert set(to) >= {"devops-lead@example.com", "oncall@example.com"}
    body = journal.db.execute("SELECT body FROM outbox").fetchone()[0]
    assert ("Automatic rollbacks of web that led here" in body) is cto
    assert "Nothing was changed" in body


def test_the_history_of_a_limit_lists_the_recent_rollbacks(journal: Journal,
                                                             tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    for _ in range(3):
        inc = journal.incidents.open("web", "app_down", "x", None, {})
        journal.incidents.update(inc, state="remediating", started_at=now_utc(),
                                 from_version=BAD, to_version=GOOD)
    other = journal.incidents.open("api", "app_down", "x", None, {})
    journal.incidents.update(other, state="remediating", started_at=now_utc())
    lines = m.desk._rollback_history()
    assert len(lines) == 3 and all(f"{BAD[:12]} -> {GOOD[:12]}" in line for line in lines)


def lockdown_waiting(journal: Journal, requested_by: int | None) -> int:
    plan = Plan(PlanKind.LOCKDOWN, LOCKDOWN_CLASS,
                (StepSpec("capture_evidence", True), StepSpec("lock_accounts", True, 60, True,
                                                               Component.ACCOUNTS)))
    evidence = {"requested_by": {"uid": requested_by, "pid": 1}} if requested_by else {}
    inc = journal.incidents.open("web", LOCKDOWN_CLASS, "lockdown requested", None, evidence,
                                 state=State.AWAITING_APPROVAL.value, automatic=False)
    journal.incidents.update(inc, "planned", "", plan=json.dumps(plan_to_dict(plan)))
    return inc


async def test_two_person_lockdown_needs_another_uid_than_its_requester(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path, policy=PolicySettings(verify_timeout=1.0, two_person=True))
    inc = lockdown_waiting(journal, requested_by=1000)
    with pytest.raises(Refused) as same:
        await m.desk.approve(inc, "uid 1000", 1000)
    assert same.value.code == "two_person" and m.desk.task is None
    with pytest.raises(Refused) as drill:
        await m.desk.approve(inc, "drill 1", None)
    assert drill.value.code == "two_person" and m.desk.task is None
    await m.desk.approve(inc, "uid 1001", 1001)
    assert m.desk.task is not None
    await m.desk.task


async def test_two_person_without_a_requester_takes_two_approvals(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path, policy=PolicySettings(verify_timeout=1.0, two_person=True))
    inc = lockdown_waiting(journal, requested_by=None)
    with pytest.raises(Refused) as first:
        await m.desk.approve(inc, "uid 0", 0)
    assert first.value.code == "second_approval_needed" and m.desk.task is None
    with pytest.raises(Refused) as again:
        await m.desk.approve(inc, "uid 0", 0)
    assert again.value.code == "two_person" and m.desk.task is None
    await m.desk.approve(inc, "uid 1001", 1001)
    assert m.desk.task is not None
    await m.desk.task


async def test_without_two_person_one_approval_runs_the_lockdown(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = lockdown_waiting(journal, requested_by=1000)
    await m.desk.approve(inc, "uid 1000", 1000)
    assert m.desk.task is not None
    await m.desk.task


@pytest.mark.parametrize(("before", "after", "expected"), [
    pytest.param({"probes": {"health": {"status": "fail"}}, "deployment": {"version": "a"}},
                 {"probes": {"health": {"status": "fail"}}, "deployment": {"version": "a"}},
                 [], id="nothing-changed"),
    pytest.param({"probes": {"health": {"status": "fail"}}, "deployment": {"version": "a"}},
                 {"probes": {"health": {"status": "ok"}}, "deployment": {"version": "b"}},
                 ["probe health: fail -> ok", "deployment version: a -> b"], id="both-changed"),
    pytest.param({"probes": {}, "database": {"revision": "0003"}},
                 {"probes": {"login": {"status": "fail"}}, "database": {"revision": "0002"}},
                 ["probe login: not run -> fail", "database revision: 0003 -> 0002"],
                 id="new-probe-and-revision"),
])
def test_evidence_changes_between_detection_and_execution(
        before: dict[str, Any], after: dict[str, Any], expected: list[str]) -> None:
    assert evidence_changes(before, after) == expected


async def test_evidence_at_detection_is_kept_when_the_plan_runs_later(
        journal: Journal, tmp_path: Path) -> None:
    m = monitor(journal, tmp_path)
    inc = waiting_rollback(journal)
    journal.incidents.set_evidence(inc, {"probes": {"health": {"status": "pass", "failing": False}},
                                         "version": BAD, "failing": ["health"]})
    await failing(m)
    await m.desk.approve(inc, "uid 0")
    assert m.desk.task is not None
    await m.desk.task
    found = journal.incidents.get(inc)
    assert found is not None
    assert found.evidence["probes"]["health"]["status"] == "pass"  # as it was at detection
    assert found.evidence["at_execution"]["probes"]["health"]["status"] == "fail"
    assert found.evidence["changed_since_detection"] == ["probe health: pass -> fail"]


async def test_nothing_opens_while_the_daemon_itself_is_degraded(
        journal: Journal, tmp_path: Path) -> None:
    """The confirmation's own runs go through the self_degraded judge too: a fault of the daemon
    met while confirming leaves no picture to act on."""
    m = monitor(journal, tmp_path)
    await failing(m)  # app_down past its threshold (nothing listens on port 9)
    m.own_fault = lambda obs: True  # from now on the daemon is short of descriptors
    await m.desk.evaluate()
    assert journal.incidents.open_for("web") is None
    m.own_fault = None
    await m.desk.evaluate()
    assert journal.incidents.open_for("web") is not None  # the control: it does open

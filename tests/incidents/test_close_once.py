"""An incident's end and its mail are one commit: a crash before it loses neither, and the restart
ends the incident with exactly one mail (the daemon-level kill -9 is
tests/reliability/test_kill9_close.py)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rollbackd.daemon.incidents.recovery import recover_interrupted
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.rollback.base import Effect, StepContext, StepFailed, StepHeld, absent
from rollbackd.policies.plans import Component
from tests.escalation.conftest import FAR_FUTURE, MailServer
from tests.incidents.test_desk import BAD, GOOD, monitor, waiting_rollback

END_STATE = {"resolved": "resolved", "held": "held", "failed": "held"}
"""The incident's state once the restart ended it. A failure the crash cut off is held: the
restart cannot tell it from a hold, and either way a person decides."""
END_MAIL = {"resolved": "resolved", "held": "held", "failed": "held"}


class Crash(Exception):
    """kill -9, in process: nothing after it runs, and the open transaction rolls back."""


class Deployment:
    """A deployment executor whose one step succeeds, is held or fails, counting its runs."""

    component: ClassVar[Component] = Component.DEPLOYMENT
    backend: ClassVar[str] = "fake"

    def __init__(self, outcome: str, runs: Counter[str]) -> None:
        self.outcome = outcome
        self.runs = runs

    def capabilities(self) -> Any:
        return {}

    async def current_version(self) -> str | None:
        return BAD

    async def evidence(self) -> dict[str, Any]:
        return {"version": BAD}

    async def backup_current(self, ctx: StepContext) -> str:
        return "nothing to back up"

    async def verify_target(self, ctx: StepContext) -> str:
        return "there"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        self.runs[name] += 1
        if self.outcome == "held":
            raise StepHeld("local changes in the work tree: nothing was changed")
        if self.outcome == "failed":
            raise StepFailed("git exited 1")
        return f"checked out {GOOD[:12]}"

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        return absent("not asked here")


def wired(journal: Journal, tmp_path: Path, port: int, outcome: str,
          runs: Counter[str]) -> TargetMonitor:
    m = monitor(journal, tmp_path, port)
    m.runner.components = {Component.DEPLOYMENT: Deployment(outcome, runs)}

    async def passes(timeout: float) -> tuple[bool, str]:
        return True, "every probe passes"

    m.runner.verify = passes
    return m


def events(journal: Journal, incident_id: int) -> Counter[str]:
    rows = journal.db.execute("SELECT message_id FROM outbox WHERE incident_id = ?",
                              (incident_id,)).fetchall()
    return Counter(re.sub(r"-\d+$", "", str(r[0]).split(".")[2].split("@")[0]) for r in rows)


@pytest.mark.parametrize("outcome", ["resolved", "held", "failed"])
async def test_a_crash_before_the_end_commits_ends_the_incident_once_after_the_restart(
        tmp_path: Path, mail_server: MailServer, outcome: str) -> None:
    mail_server.start()
    path, runs = tmp_path / "journal.sqlite3", Counter[str]()
    journal = Journal(path)
    m = wired(journal, tmp_path, mail_server.port, outcome, runs)
    inc = waiting_rollback(journal)
    plan = m.desk.stored_plan(inc)
    assert plan is not None

    def crash(name: str, point: str) -> None:
        if (name, point) == (outcome, "close"):
            raise Crash

    m.runner.fault_hook = crash
    with pytest.raises(Crash):
        await m.runner.execute(inc, plan)
    # The end, its breaker and ledger writes and its mail are gone together.
    assert not journal.db.in_transaction
    found = journal.incidents.get(inc)
    assert found is not None
    assert found.state == ("verifying" if outcome == "resolved" else "remediating")
    assert events(journal, inc) == {"opened": 1}
    assert journal.breakers.get("web", plan.kind).failures == ()
    assert [e.version for e in journal.ledger.entries("web") if e.bad_at] == []
    journal.close()

    journal = Journal(path)  # the restart
    try:
        m = wired(journal, tmp_path, mail_server.port, outcome, runs)
        desks = {"web": m.desk}
        held = await recover_interrupted(journal, m.outbox, tmp_path / "reports", desks)
        if m.desk.task is not None:
            assert await m.desk.task is True
        assert held == ([] if outcome == "resolved" else [inc])
        found = journal.incidents.get(inc)
        assert found is not None and found.state == END_STATE[outcome]
        # A second restart finds nothing left to do.
        assert await recover_interrupted(journal, m.outbox, tmp_path / "reports", desks) == []
        assert m.desk.task is None or m.desk.task.done()
        assert events(journal, inc) == {"opened": 1, END_MAIL[outcome]: 1}
        assert runs == {"git_checkout": 1}  # no step ran twice
        assert all(s.state != "running" for s in journal.steps.of(inc))
        assert [s.name for s in journal.steps.of(inc)] == plan.step_names[
            :len(plan.step_names) if outcome == "resolved" else plan.step_names.index(
                "git_checkout") + 1]
        if outcome == "resolved":
            assert [e.version for e in journal.ledger.entries("web") if e.bad_at] == [BAD]
        else:
            last = journal.steps.of(inc)[-1]
            assert found.held_reason is not None
            assert found.held_reason.startswith(f"step git_checkout failed: {last.detail}")

        sent = await m.outbox.flush(now=FAR_FUTURE)
        assert sent == 2
        per = Counter((r, str(d.msg["Message-ID"])) for d in mail_server.deliveries
                      for r in d.rcpts)
        assert set(per.values()) == {1}  # every recipient got each mail exactly once
        end = [mid for _, mid in per if f".{END_MAIL[outcome]}" in mid]
        assert len(set(end)) == 1  # one Message-ID for the end
    finally:
        journal.close()


def held_incident(journal: Journal) -> int:
    inc = waiting_rollback(journal)
    journal.incidents.update(inc, state="remediating")
    journal.incidents.hold(inc, "step git_checkout was interrupted")
    return inc


@pytest.mark.parametrize("change", ["deny", "close_removed", "request_lockdown", "hold"])
async def test_a_state_change_and_its_mail_commit_together(
        tmp_path: Path, change: str) -> None:
    """Each place that changes an incident and mails about it: a crash right after the mail
    is queued, before the commit, leaves neither the change nor the mail."""
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        m = monitor(journal, tmp_path)
        send = m.outbox.send

        def send_then_crash(*args: Any, **kwargs: Any) -> tuple[str, ...]:
            send(*args, **kwargs)
            raise Crash

        if change == "deny":
            inc = held_incident(journal)
        elif change == "close_removed":
            inc = waiting_rollback(journal)
        elif change == "hold":
            inc = waiting_rollback(journal)
            journal.incidents.update(inc, state="remediating")
            journal.steps.started(inc, 0, "git_checkout", False)  # a crash cut it off
        before = [(i.id, i.state) for i in journal.incidents.recent()]
        steps_before = journal.db.execute("SELECT id, state FROM steps").fetchall()
        m.outbox.send = send_then_crash  # type: ignore[method-assign]
        with pytest.raises(Crash):
            if change == "deny":
                m.desk.deny(inc, "uid 0")
            elif change == "close_removed":
                m.desk.close_removed("its target was removed from the config")
            elif change == "request_lockdown":
                plan = m.desk.stored_plan(waiting_rollback(journal))
                before = [(i.id, i.state) for i in journal.incidents.recent()]
                assert plan is not None
                m.desk.request_lockdown(plan, "credential dump", {})
            else:
                await recover_interrupted(journal, m.outbox, tmp_path / "reports",
                                          {"web": m.desk})
        assert not journal.db.in_transaction
        assert [(i.id, i.state) for i in journal.incidents.recent()] == before
        assert journal.db.execute("SELECT id, state FROM steps").fetchall() == steps_before
        assert journal.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        journal.close()


@pytest.mark.parametrize("approved", [False, True], ids=["by-itself", "on-approval"])
async def test_a_crash_between_two_steps_goes_on_or_holds_once_after_the_restart(
        tmp_path: Path, mail_server: MailServer, approved: bool) -> None:
    """Killed after git_checkout was journaled done and before verify started: the next step
    never ran, so the plan goes on under the rules of a step found done (by itself if it ran by
    itself), or is held once, saying where it stopped and why it waits."""
    mail_server.start()
    path, runs = tmp_path / "journal.sqlite3", Counter[str]()
    journal = Journal(path)
    m = wired(journal, tmp_path, mail_server.port, "resolved", runs)
    inc = waiting_rollback(journal)
    if approved:
        journal.incidents.add_event(inc, "approved", "by alice")
    plan = m.desk.stored_plan(inc)
    assert plan is not None
    nxt = plan.step_names[plan.step_names.index("git_checkout") + 1]

    def crash(name: str, point: str) -> None:
        if (name, point) == ("git_checkout", "done"):
            raise Crash

    m.runner.fault_hook = crash
    with pytest.raises(Crash):
        await m.runner.execute(inc, plan)
    assert [s.state for s in journal.steps.of(inc)][-1] == "done"
    journal.close()

    journal = Journal(path)  # the restart
    try:
        m = wired(journal, tmp_path, mail_server.port, "resolved", runs)
        desks = {"web": m.desk}
        held = await recover_interrupted(journal, m.outbox, tmp_path / "reports", desks)
        if m.desk.task is not None:
            assert await m.desk.task is True
        assert held == ([inc] if approved else [])
        found = journal.incidents.get(inc)
        assert found is not None and found.state == ("held" if approved else "resolved")
        assert await recover_interrupted(journal, m.outbox, tmp_path / "reports", desks) == []
        assert runs == {"git_checkout": 1}  # not run again
        if approved:
            assert found.held_reason is not None
            assert f"between steps git_checkout and {nxt}" in found.held_reason
            assert "person's approval" in found.held_reason
            assert events(journal, inc) == {"opened": 1, "held": 1}
        else:
            assert [s.name for s in journal.steps.of(inc)] == plan.step_names
            assert events(journal, inc) == {"opened": 1, "resolved": 1}
        assert await m.outbox.flush(now=FAR_FUTURE) == 2
        per = Counter((r, str(d.msg["Message-ID"])) for d in mail_server.deliveries
                      for r in d.rcpts)
        assert set(per.values()) == {1}
    finally:
        journal.close()

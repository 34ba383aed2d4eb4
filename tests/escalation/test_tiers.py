"""Tiers: an escalated incident nobody acknowledges reaches the next tier, once, across restarts."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.escalation.tiers import TierChecker
from rollbackd.daemon.journal.store import Journal
from tests.escalation.conftest import FAR_FUTURE, MailServer, incident, make_config, outbox_for
from tests.notices import notice

TIERED = """\
[contacts.oncall]
emails = ["oncall@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com"]

[contacts.lead]
emails = ["lead@example.com"]
tier = 2

[contacts.emergency]
emails = ["cto@example.com"]
tier = 3
"""
FAST = 'ack_timeout = ["1s", "2s"]\ncheck_interval = "100ms"'


def later(seconds: float) -> datetime:
    return now_utc() + timedelta(seconds=seconds)


def escalated(outbox: Outbox, journal: Journal) -> int:
    """What the monitor does when it must not act: open escalated, mail the first tier."""
    inc = incident(journal, state="escalated", reason="no known-good version: escalating")
    outbox.send(notice(inc, "opened", "[rollbackd] web: app_down, escalated", "nothing known-good\n"))
    return inc


def tier_mails(journal: Journal) -> list[tuple[str, str]]:
    rows = journal.db.execute("SELECT message_id, recipients FROM outbox WHERE message_id"
                              " LIKE '%.tier-%' ORDER BY id")
    return [(r[0].split(".")[2].split("@")[0], r[1]) for r in rows]


async def test_unacknowledged_incident_climbs_the_tiers(journal: Journal,
                                                        mail_server: MailServer) -> None:
    outbox = outbox_for(journal, mail_server.port, contacts=TIERED, escalation=FAST)
    checker = TierChecker(journal.escalations, outbox)
    inc = escalated(outbox, journal)
    assert journal.escalations.of(inc) == (1, [])
    assert checker.check(later(0.5)) == 0  # tier 1 still has time
    assert checker.check(later(1.1)) == 1
    assert journal.escalations.of(inc) == (2, ["lead@example.com"])
    assert checker.check(later(1.2)) == 0  # tier 2's own timeout (2 s) starts now
    assert checker.check(later(3.3)) == 1
    assert checker.check(FAR_FUTURE) == 0  # the top tier has it; nobody further
    assert tier_mails(journal) == [("tier-2", '["lead@example.com"]'),
                                   ("tier-3", '["cto@example.com"]')]
    events = [e for _, e, _ in journal.incidents.timeline(inc)]
    assert events.count("paged") == 2
    # Who was paged hears the rest of the incident.
    to = outbox.send(notice(inc, "resolved", "[rollbackd] web: resolved", "ok\n"))
    assert set(to) == {"oncall@example.com", "devops-lead@example.com", "lead@example.com",
                       "cto@example.com"}
    mail_server.start()
    assert await outbox.flush() == 4
    opened = outbox.message_id(inc, "opened")
    first, *rest = mail_server.deliveries
    assert first.rcpts == ["devops-lead@example.com", "oncall@example.com"]
    assert all(d.msg["In-Reply-To"] == opened for d in rest)
    page = rest[0].msg.get_body(("plain",))
    assert page is not None
    text = page.get_content()  # type: ignore[attr-defined]
    assert f"rollbackctl ack {inc}" in text and "You are tier 2" in text


async def test_acknowledgement_or_resolution_stops_the_climb(journal: Journal) -> None:
    outbox = outbox_for(journal, 9, contacts=TIERED, escalation=FAST)
    checker = TierChecker(journal.escalations, outbox)
    acked = escalated(outbox, journal)
    journal.incidents.update(acked, "acked", "acknowledged", acked_at=now_utc())
    recovered = escalated(outbox, journal)
    journal.incidents.update(recovered, "recovered", "probes pass", state="resolved",
                             closed_at=now_utc())
    # An incident rollbackd is handling itself needs nobody: no ladder.
    acting = incident(journal, state="open")
    outbox.send(notice(acting, "opened", "[rollbackd] acting", "rolling back\n"))
    assert checker.check(FAR_FUTURE) == 0
    assert tier_mails(journal) == []
    assert journal.escalations.of(acting) is None


async def test_a_new_reason_to_need_a_person_restarts_the_clock(journal: Journal) -> None:
    outbox = outbox_for(journal, 9, contacts=TIERED, escalation=FAST)
    checker = TierChecker(journal.escalations, outbox)
    inc = incident(journal, state="awaiting_approval")
    outbox.send(notice(inc, "opened", "waiting for approval", "rollbackctl approve\n"))
    journal.db.execute("UPDATE escalations SET since = ?",
                       ((now_utc() - timedelta(hours=1)).isoformat(),))
    # Approved (a person acted): remediating needs nobody, the ladder pauses.
    journal.incidents.update(inc, "approved", "by uid 0", state="remediating")
    assert checker.check() == 0
    journal.incidents.update(inc, "failed", "step failed", state="failed")
    journal.incidents.update(inc, "escalated", "a person must take over", state="escalated")
    outbox.send(notice(inc, "failed", "ROLLBACK FAILED", "failed\n"))
    assert checker.check(later(0.5)) == 0  # fresh clock for the failure
    assert checker.check(later(1.1)) == 1


async def test_a_restarted_daemon_neither_repages_nor_forgets_a_tier(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    cfg = make_config(9, contacts=TIERED, escalation=FAST)
    first = Journal(path)
    try:
        outbox = Outbox(first, cfg)
        inc = escalated(outbox, first)
        assert TierChecker(first.escalations, outbox).check(later(1.1)) == 1
    finally:
        first.close()
    second = Journal(path)
    try:
        checker = TierChecker(second.escalations, Outbox(second, cfg))
        assert checker.check(later(1.5)) == 0  # tier 2 was paged; its 2 s are not over
        assert second.escalations.of(inc) == (2, ["lead@example.com"])
        assert checker.check(later(3.5)) == 1
        assert [t for t, _ in tier_mails(second)] == ["tier-2", "tier-3"]
    finally:
        second.close()


async def test_short_timeouts_reach_the_next_tier_in_real_time(journal: Journal,
                                                               mail_server: MailServer) -> None:
    mail_server.start()
    outbox = outbox_for(journal, mail_server.port, contacts=TIERED,
                        escalation='ack_timeout = "300ms"\ncheck_interval = "100ms"')
    tasks = [asyncio.create_task(outbox.run(poll=0.1)),
             asyncio.create_task(TierChecker(journal.escalations, outbox).run())]
    try:
        started = time.monotonic()
        inc = escalated(outbox, journal)
        while not mail_server.box.to("cto@example.com") and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(m["Subject"]) for m in mail_server.box.to("lead@example.com")] == [
        f"[rollbackd] web: incident {inc} UNACKNOWLEDGED, tier 2"]
    assert len(mail_server.box.to("cto@example.com")) == 1
    assert 0.6 <= took < 5, took  # two timeouts of 300 ms, checked every 100 ms

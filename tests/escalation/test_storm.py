"""Storms: 50 incidents in a minute make a bounded number of mails, and nothing is left out."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from tests.escalation.conftest import FAR_FUTURE, MailServer, incident, make_config, outbox_for
from tests.notices import notice

STORM = 'storm_window = "1m"\nstorm_max = 5\ndigest_delay = "300ms"'


def listed(server: MailServer) -> list[tuple[int, str]]:
    """(incident, event) of every held mail the digests list, once per listing."""
    found: list[tuple[int, str]] = []
    for d in server.deliveries:
        if "incident storm" not in str(d.msg["Subject"]):
            continue
        body = d.msg.get_body(("plain",))
        assert body is not None
        current = 0
        for line in body.get_content().splitlines():  # type: ignore[attr-defined]
            if m := re.match(r"Incident (\d+):", line):
                current = int(m.group(1))
            elif m := re.match(r"- (\w+):", line):
                found.append((current, m.group(1)))
    return found


async def test_a_storm_of_50_incidents_in_a_minute_yields_a_bounded_number_of_mails(
    journal: Journal, mail_server: MailServer
) -> None:
    mail_server.start()
    outbox = outbox_for(journal, mail_server.port, escalation=STORM)
    sender = asyncio.create_task(outbox.run(poll=0.1))
    try:
        ids = []
        for i in range(50):  # 50 targets fail within a minute (here: within about a second)
            inc = incident(journal, target=f"web-{i:02d}")
            ids.append(inc)
            outbox.send(notice(inc, "opened", f"[rollbackd] web-{i:02d}: app_down",
                           f"app_down: web-{i:02d} health cannot connect\n"))
            await asyncio.sleep(0.02)
        for inc in ids:  # and every one of them is resolved again
            outbox.send(notice(inc, "resolved", f"[rollbackd] incident {inc} resolved", "ok\n"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (journal.mail.counts()["queued"]
                                               or journal.mail.held_pending()):
            await asyncio.sleep(0.1)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    subjects = [str(d.msg["Subject"]) for d in mail_server.deliveries]
    singles = [s for s in subjects if "incident storm" not in s]
    digests = [s for s in subjects if "incident storm" in s]
    # The first five incidents have their own thread (opened + resolved); the other 45 are
    # only in digests, each event listed exactly once.
    assert len(singles) == 10, singles
    assert 1 <= len(digests) <= 6, digests
    assert len(subjects) <= 16
    assert sorted(listed(mail_server)) == sorted((i, e) for i in ids[5:]
                                                  for e in ("opened", "resolved"))
    assert all(d.rcpts == ["devops-lead@example.com", "oncall@example.com"]
               for d in mail_server.deliveries)


async def test_incidents_after_the_window_have_their_own_mails_again(
    journal: Journal, mail_server: MailServer
) -> None:
    outbox = outbox_for(journal, mail_server.port, escalation=STORM)
    for i in range(8):
        outbox.send(notice(incident(journal, target=f"w{i}"), "opened", f"s{i}", "b\n"))
    assert len(journal.mail.held_pending()) == 3
    # Two minutes later the storm is over: the next incident is mailed on its own.
    journal.db.execute("UPDATE incidents SET detected_at = ?",
                       ((now_utc() - timedelta(minutes=2)).isoformat(),))
    late = incident(journal, target="late")
    outbox.send(notice(late, "opened", "late", "b\n"))
    mail_server.start()
    await outbox.flush(now=FAR_FUTURE)
    subjects = [str(d.msg["Subject"]) for d in mail_server.deliveries]
    assert subjects.count("late") == 1
    assert [s for s in subjects if "storm" in s] == [
        "[rollbackd] incident storm: 3 incidents, 3 updates grouped"]


async def test_held_mails_survive_a_restart_and_are_digested_once(
    tmp_path: Path, mail_server: MailServer
) -> None:
    path = tmp_path / "journal.sqlite3"
    cfg = make_config(mail_server.port, escalation=STORM)
    first = Journal(path)
    try:
        outbox = Outbox(first, cfg)
        for i in range(7):
            outbox.send(notice(incident(first, target=f"w{i}"), "opened", f"s{i}", "b\n"))
    finally:
        first.close()
    mail_server.start()
    second = Journal(path)
    try:
        outbox = Outbox(second, cfg)
        assert await outbox.flush(now=FAR_FUTURE) == 6  # five singles and one digest
        assert await outbox.flush(now=FAR_FUTURE) == 0
        assert second.mail.held_pending() == []
    finally:
        second.close()
    assert sorted(listed(mail_server)) == [(6, "opened"), (7, "opened")]

"""Delivery against real SMTP servers: down then back, partial refusals, restarts; in order."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from tests.escalation.conftest import FAR_FUTURE, MailServer, incident, make_config, outbox_for
from tests.notices import notice

# Three incidents of different classes, three mails each, routed to different roles.
SCENARIO = (("app_down", ("opened", "started", "resolved")),
            ("auth_broken", ("opened", "failed", "held-7")),
            ("dependency_down", ("opened", "tier-2", "resolved")))


def enqueue_scenario(outbox: Outbox, journal: Journal) -> dict[str, list[str]]:
    """Interleaves the incidents' mails; returns each expected recipient's Message-IDs in order."""
    ids = [incident(journal, cls, target=f"t{i}") for i, (cls, _) in enumerate(SCENARIO)]
    expected: dict[str, list[str]] = {}
    for step in range(3):
        for inc, (cls, events) in zip(ids, SCENARIO, strict=True):
            event = events[step]
            if event == "failed":  # what the runner journals before its "failed" mail
                journal.incidents.update(inc, state="remediating")
                journal.incidents.update(inc, "failed", "step git_checkout failed",
                                         state="failed")
            to = outbox.send(notice(inc, event, f"[rollbackd] {cls} {event}", f"{event} of {inc}\n"))
            for addr in to:
                expected.setdefault(addr, []).append(outbox.message_id(inc, event))
    return expected


def check_exactly_once_in_order(server: MailServer, expected: dict[str, list[str]]) -> None:
    pairs = server.box.pairs()
    assert all(n == 1 for n in Counter(pairs).values()), Counter(pairs).most_common(3)
    got: dict[str, list[str]] = {}
    for rcpt, mid in pairs:
        got.setdefault(rcpt, []).append(mid)
    # Per recipient the same set; and within each incident the order it was enqueued in.
    assert {r: sorted(m) for r, m in got.items()} == {r: sorted(m) for r, m in expected.items()}
    for rcpt, mids in got.items():
        for inc in {m.split(".")[1] for m in mids}:
            mine = [m for m in mids if m.split(".")[1] == inc]
            assert mine == [m for m in expected[rcpt] if m.split(".")[1] == inc], rcpt


async def test_smtp_down_for_a_while_then_back_delivers_each_once_per_recipient_in_order(
    journal: Journal, mail_server: MailServer
) -> None:
    outbox = outbox_for(journal, mail_server.port)
    sender = asyncio.create_task(outbox.run(poll=0.1))
    try:
        expected = enqueue_scenario(outbox, journal)
        assert set(expected) == {"oncall@example.com", "dba@example.com",
                                 "devops-lead@example.com", "cto@example.com"}
        await asyncio.sleep(1.5)  # refused connections; every incident's first mail backs off
        rows = [dict(r) for r in journal.db.execute("SELECT * FROM outbox ORDER BY id")]
        assert not any(r["sent_at"] for r in rows)
        # Only each incident's first mail was tried; the rest wait behind it, untried.
        assert [r["message_id"] for r in rows if r["attempts"]] == [
            outbox.message_id(i, "opened") for i in (1, 2, 3)]
        started = time.monotonic()
        await asyncio.to_thread(mail_server.start)
        while journal.mail.counts()["queued"] and time.monotonic() - started < 20:
            await asyncio.sleep(0.1)
        assert journal.mail.counts() == {"sent": 9, "queued": 0}
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    check_exactly_once_in_order(mail_server, expected)
    # One thread per incident: each mail answers the incident's first one.
    for d in mail_server.deliveries:
        inc = str(d.msg["Message-ID"]).split(".")[1]
        if ".opened@" not in str(d.msg["Message-ID"]):
            assert d.msg["In-Reply-To"] == outbox.message_id(int(inc), "opened")


async def test_a_refused_recipient_is_retried_alone_and_holds_back_its_incident(
    journal: Journal, mail_server: MailServer
) -> None:
    mail_server.box.refuse["dba@example.com"] = 2  # busy twice, then accepts
    mail_server.start()
    outbox = outbox_for(journal, mail_server.port)
    expected = enqueue_scenario(outbox, journal)
    await outbox.flush()
    row = journal.db.execute("SELECT * FROM outbox WHERE incident_id = 2 ORDER BY id").fetchone()
    assert json.loads(row["recipients"]) == ["dba@example.com"]  # oncall has it already
    assert row["sent_at"] is None and "451" in row["last_error"]
    # Incident 2's later mails wait for it; the other incidents are not held up.
    assert [m for r, m in mail_server.box.pairs() if ".2." in m] == [
        outbox.message_id(2, "opened")]
    assert len([m for _, m in mail_server.box.pairs() if ".1." in m]) == 6
    for _ in range(3):
        await outbox.flush(now=FAR_FUTURE)
    assert journal.mail.counts()["queued"] == 0
    check_exactly_once_in_order(mail_server, expected)


async def test_restart_while_mails_wait_loses_none(tmp_path: Path, mail_server: MailServer) -> None:
    path = tmp_path / "journal.sqlite3"
    first = Journal(path)
    try:
        old = Outbox(first, make_config(mail_server.port))
        expected = enqueue_scenario(old, first)
        assert await old.flush() == 0  # SMTP down; then the process goes away
    finally:
        first.close()
    mail_server.start()
    second = Journal(path)
    try:
        new = Outbox(second, make_config(mail_server.port))
        assert await new.flush(now=FAR_FUTURE) == 9
        assert await new.flush(now=FAR_FUTURE) == 0
        # Replays by the restarted daemon (same incident and event) are not sent again.
        new.send(notice(1, "opened", "again", "again\n"))
        assert await new.flush(now=FAR_FUTURE) == 0
    finally:
        second.close()
    check_exactly_once_in_order(mail_server, expected)

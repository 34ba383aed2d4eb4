"""Escalation mail once across instances: claimed outboxes against a real SMTP server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rollbackd.daemon.cluster.mail import ClaimingOutbox
from rollbackd.daemon.cluster.session import SCHEMA
from rollbackd.daemon.config import Config, parse_config
from rollbackd.daemon.journal.claims import MailClaims
from rollbackd.daemon.journal.pg import PgConnection, open_pg_journal
from rollbackd.daemon.journal.store import Journal
from tests.conftest import SmtpSink
from tests.notices import notice


def make_config(port: int) -> Config:
    return parse_config(f"""\
[smtp]
host = "127.0.0.1"
port = {port}
timeout = "2s"

[contacts.oncall]
emails = ["oncall@example.com"]

[escalation]
storm_max = 100

[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
""")


@pytest.fixture
def journals(pg_dsn: str, tmp_path: Path) -> Iterator[list[Journal]]:
    """Three instances' journals: three connections to one database."""
    js = [open_pg_journal(pg_dsn, tmp_path / f"i{n}") for n in range(3)]
    try:
        db = js[0].db
        assert isinstance(db, PgConnection)
        for ddl in SCHEMA:  # the cluster's tables, as a daemon on PostgreSQL creates them
            db.ready().execute(ddl)
        yield js
    finally:
        for j in js:
            j.close()


async def test_three_instances_flushing_at_once_send_each_mail_once(
        journals: list[Journal], smtp: SmtpSink) -> None:
    config = make_config(smtp.port)
    boxes = [ClaimingOutbox(j, config, f"i{n}") for n, j in enumerate(journals)]
    for n in range(12):
        inc = journals[0].incidents.open("web", "app_down", "down", None, {}, state="escalated")
        for event in ("opened", "tier-2"):
            boxes[n % 3].send(notice(inc, event, f"[rollbackd] {n} {event}", "body"))
    for _ in range(3):  # each round: all three at once, as their background senders would
        await asyncio.gather(*(b.flush() for b in boxes))
    ids = Counter(str(m["Message-ID"]) for _, m in smtp.messages)
    assert len(ids) == 24 and set(ids.values()) == {1}, ids
    assert journals[1].mail.counts() == {"sent": 24, "queued": 0}
    claimers = journals[0].db.execute(
        "SELECT claimed_by, COUNT(*) FROM outbox_claims GROUP BY claimed_by").fetchall()
    assert sum(r[1] for r in claimers) == 24


def test_a_live_claim_is_respected_and_an_expired_one_taken_over(
        journals: list[Journal], pg_dsn: str) -> None:
    j = journals[0]
    j.mail.enqueue("<m@h>", None, ["a@example.com"], "s", "b")
    db0, db1 = j.db, journals[1].db
    assert isinstance(db0, PgConnection) and isinstance(db1, PgConnection)
    claims0, claims1 = MailClaims(db0), MailClaims(db1)
    got = claims0.claim(1, "i0", ttl=60)
    assert got is not None and got.message_id == "<m@h>"
    assert claims1.claim(1, "i1", ttl=60) is None  # i0 is sending it
    assert claims0.claim(1, "i0", ttl=60) is not None  # its own claim, again
    with psycopg.connect(pg_dsn, autocommit=True) as admin:  # i0 died mid-send long ago
        admin.execute("UPDATE outbox_claims SET claimed_at = claimed_at - interval '2 minutes'")
    taken = claims1.claim(1, "i1", ttl=60)
    assert taken is not None
    j.mail.sent(1)
    assert claims0.claim(1, "i0", ttl=60) is None  # sent: nobody claims it again


def test_a_row_locked_by_a_claimer_is_skipped_not_waited_for(
        journals: list[Journal], pg_dsn: str) -> None:
    journals[0].mail.enqueue("<m@h>", None, ["a@example.com"], "s", "b")
    db1 = journals[1].db
    assert isinstance(db1, PgConnection)
    claims1 = MailClaims(db1)
    with psycopg.connect(pg_dsn) as other, other.transaction():
        other.execute("SELECT id FROM outbox WHERE id = 1 FOR UPDATE")  # claiming right now
        assert claims1.claim(1, "i1", ttl=60) is None
    assert claims1.claim(1, "i1", ttl=60) is not None

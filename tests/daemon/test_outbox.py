"""The email outbox against a real SMTP server that is down at first, then comes up."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from rollbackd.daemon.config import Config, parse_config
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.escalation.outbox import Outbox, _retry_delay
from rollbackd.daemon.journal.store import Journal
from tests.notices import notice

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
EVENTS = ("opened", "started", "resolved")


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 OK"

    @property
    def ids(self) -> list[str]:
        return [str(m["Message-ID"]) for _, m in self.messages]


def make_config(port: int) -> Config:
    return parse_config(f"""\
[smtp]
host = "127.0.0.1"
port = {port}
from = "rollbackd@localhost"
timeout = "2s"

[contacts.oncall]
emails = ["oncall@example.com", "shared@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com", "shared@example.com"]

[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
""")


@pytest.fixture
def port() -> int:
    return free_port()  # nothing listens here until a test starts a server on it


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


@pytest.fixture
def smtp_later(port: int) -> Iterator[tuple[Controller, Sink]]:
    """A real SMTP server for `port`, started by the test when it wants the server up."""
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    yield controller, sink
    if getattr(controller, "_thread", None) is not None:
        controller.stop()


def enqueue_three(outbox: Outbox, journal: Journal) -> int:
    inc = journal.incidents.open("web", "app_down", "health failing", None, {})
    for event in EVENTS:
        outbox.send(notice(inc, event, f"[rollbackd] web: incident {inc} {event}", f"{event} body\n"))
    return inc


def outbox_rows(journal: Journal) -> list[dict[str, Any]]:
    return [dict(r) for r in journal.db.execute("SELECT * FROM outbox ORDER BY id")]


async def test_mail_is_kept_while_smtp_is_down_and_delivered_once_when_it_is_up(
    journal: Journal, port: int, smtp_later: tuple[Controller, Sink]
) -> None:
    outbox = Outbox(journal, make_config(port))
    inc = enqueue_three(outbox, journal)
    ids = [r["message_id"] for r in outbox_rows(journal)]
    assert ids == [f"<rollbackd.{inc}.{e}@{outbox.host}>" for e in EVENTS]
    assert outbox.recipients() == ["oncall@example.com", "shared@example.com",
                                   "devops-lead@example.com"]

    # SMTP down: nothing is sent, the first mail carries the error and a retry time.
    before = datetime.now(UTC)
    assert await outbox.flush() == 0
    rows = outbox_rows(journal)
    first = rows[0]
    assert first["attempts"] == 1
    assert first["sent_at"] is None
    assert first["last_error"] and "refused" in first["last_error"].lower()
    assert datetime.fromisoformat(first["next_attempt_at"]) > before
    assert datetime.fromisoformat(first["next_attempt_at"]) <= before + timedelta(seconds=10)
    # The rest wait behind it, untried, so one incident's mails stay in order.
    assert [(r["attempts"], r["sent_at"]) for r in rows[1:]] == [(0, None), (0, None)]
    assert journal.mail.counts() == {"sent": 0, "queued": 3}

    controller, sink = smtp_later
    controller.start()
    assert await outbox.flush(now=FAR_FUTURE) == 3
    assert sink.ids == ids  # in order, each exactly once, with the Message-IDs from the queue
    opened = ids[0]
    for (rcpts, msg), event in zip(sink.messages, EVENTS, strict=True):
        assert sorted(rcpts) == sorted(outbox.recipients())
        assert str(msg["Subject"]) == f"[rollbackd] web: incident {inc} {event}"
        assert str(msg["From"]) == "rollbackd@localhost"
        body = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert body == f"{event} body\n"
        if event == "opened":
            assert msg["In-Reply-To"] is None and msg["References"] is None
        else:
            assert str(msg["In-Reply-To"]) == opened
            assert str(msg["References"]) == opened
    rows = outbox_rows(journal)
    assert all(r["sent_at"] for r in rows)
    assert [r["attempts"] for r in rows] == [2, 1, 1]
    assert journal.mail.counts() == {"sent": 3, "queued": 0}

    # Nothing more to send, now or ever.
    assert await outbox.flush(now=FAR_FUTURE) == 0
    assert len(sink.messages) == 3


async def test_a_mail_waiting_for_its_retry_holds_back_the_rest_of_its_incident(
    journal: Journal, port: int, smtp_later: tuple[Controller, Sink]
) -> None:
    outbox = Outbox(journal, make_config(port))
    enqueue_three(outbox, journal)
    ids = [r["message_id"] for r in outbox_rows(journal)]
    assert await outbox.flush() == 0  # SMTP down: "opened" now waits ~2 s for its retry
    controller, sink = smtp_later
    controller.start()
    await outbox.flush()  # before "opened" is due again
    assert sink.ids == ids[:len(sink.ids)], "mails of one incident left out of order"
    await outbox.flush(now=FAR_FUTURE)
    assert sink.ids == ids


async def test_enqueueing_an_event_twice_sends_it_once(
    journal: Journal, port: int, smtp_later: tuple[Controller, Sink]
) -> None:
    controller, sink = smtp_later
    controller.start()
    outbox = Outbox(journal, make_config(port))
    inc = journal.incidents.open("web", "app_down", "down", None, {})
    outbox.send(notice(inc, "opened", "s", "b"))
    assert await outbox.flush() == 1
    outbox.send(notice(inc, "opened", "s", "b"))  # e.g. replayed after a restart
    assert await outbox.flush(now=FAR_FUTURE) == 0
    assert len(sink.messages) == 1


async def test_a_restarted_daemon_sends_what_the_last_one_left_queued(
    tmp_path: Path, port: int, smtp_later: tuple[Controller, Sink]
) -> None:
    path = tmp_path / "journal.sqlite3"
    first = Journal(path)
    try:
        old = Outbox(first, make_config(port))
        enqueue_three(old, first)
        assert await old.flush() == 0  # SMTP down; then the daemon stops
        ids = [r["message_id"] for r in outbox_rows(first)]
    finally:
        first.close()

    controller, sink = smtp_later
    controller.start()
    second = Journal(path)
    try:
        new = Outbox(second, make_config(port))
        # Once the stored retry time has passed, the new process sends all of it, in order.
        assert await new.flush(now=FAR_FUTURE) == 3
        assert sink.ids == ids
        assert await new.flush(now=FAR_FUTURE) == 0
        assert second.mail.counts() == {"sent": 3, "queued": 0}
    finally:
        second.close()


async def test_no_contacts_means_nothing_is_queued(journal: Journal, port: int) -> None:
    cfg = make_config(port).model_copy(update={"contacts": {}})
    outbox = Outbox(journal, cfg)
    outbox.send(notice(None, "opened", "s", "b"))
    assert outbox_rows(journal) == []
    assert await outbox.flush(now=FAR_FUTURE) == 0


async def test_mail_without_an_incident_is_not_threaded(
    journal: Journal, port: int, smtp_later: tuple[Controller, Sink]
) -> None:
    controller, sink = smtp_later
    controller.start()
    outbox = Outbox(journal, make_config(port))
    outbox.send(notice(None, "redeploy-daily", "[rollbackd] summary", "all well\n"))
    assert await outbox.flush() == 1
    (_, msg), = sink.messages
    assert str(msg["Message-ID"]) == f"<rollbackd.0.redeploy-daily@{outbox.host}>"
    assert msg["In-Reply-To"] is None


def test_importing_the_outbox_warns_nothing() -> None:
    # A fresh interpreter: this module has imported it already. (It once used tenacity's
    # deprecated `initial=`, which broke every in-process import under warnings-as-errors.)
    out = subprocess.run([sys.executable, "-W", "error", "-c", "import rollbackd.daemon.escalation.outbox"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_retry_delay_grows_from_2_s_to_5_min_with_jitter() -> None:
    lows = []
    for attempts in range(1, 13):
        delays = [_retry_delay(attempts) for _ in range(20)]
        assert all(2 <= d <= 301 for d in delays), (attempts, delays)
        lows.append(min(delays))
    assert max(_retry_delay(1) for _ in range(20)) <= 3
    assert lows[-1] >= 300  # capped at 5 min
    assert all(b >= a - 1 for a, b in zip(lows, lows[1:], strict=False))  # never shrinks

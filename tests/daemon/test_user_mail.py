"""rollbackd's own mail to the app's users, against a real SMTP server (aiosmtpd) and a real
journal: refused addresses are counted failed and never retried, a server that takes nothing
holds the step with the counts, and a second run mails only those left."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections import Counter
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from rollbackd.daemon.config import SmtpSettings
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.rollback import user_mail
from rollbackd.daemon.rollback.base import StepHeld
from rollbackd.daemon.rollback.notice_settings import NoticeEvent, UserNoticeSettings
from rollbackd.daemon.rollback.user_mail import Mailing


class Refusing:
    """Accepts every address but those with "bounce" (550) or "grey" (451) in them."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, Message]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: Any) -> str:
        if "bounce" in address:
            return "550 5.1.1 no such user"
        if "grey" in address:
            return "451 4.7.1 greylisted, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.accepted += [(r, msg) for r in envelope.rcpt_tos]
        return "250 OK"


@pytest.fixture
def server() -> Iterator[tuple[Refusing, int]]:
    handler, port = Refusing(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def mailing(journal: Journal, port: int, addresses: list[str]) -> Mailing:
    inc = journal.incidents.open("grading", "lockdown", "test", None, {})
    journal.user_notices.queue(inc, NoticeEvent.PASSWORD_RESET.value, addresses)
    return Mailing(inc, "grading", NoticeEvent.PASSWORD_RESET,
                   UserNoticeSettings(via="mail", rate=1000, app_url="https://grading.test"),
                   SmtpSettings(host="127.0.0.1", port=port), "rollbackd@localhost",
                   "host.test", journal.user_notices)


def test_refusals_are_counted_and_each_accepted_user_gets_one_mail(
        tmp_path: Path, server: tuple[Refusing, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_backoff(asyncio.sleep))
    handler, port = server
    journal = Journal(tmp_path / "journal.sqlite3")
    good = [f"u{i}@example.org" for i in range(20)]
    m = mailing(journal, port, [*good, "bounce@example.org", "grey@example.org"])
    counts = asyncio.run(m.run(time.monotonic() + 60))
    assert (counts.sent, counts.failed, counts.queued) == (20, 2, 0)
    assert counts.describe() == "20 sent, 2 failed"
    assert Counter(r for r, _ in handler.accepted) == Counter(good)
    ids = [str(msg["Message-ID"]) for _, msg in handler.accepted]
    assert len(set(ids)) == 20 and all(i.startswith(f"<rollbackd.{m.incident_id}.user-notice.")
                                      for i in ids)
    subject = str(handler.accepted[0][1]["Subject"])
    assert subject == "Please reset your password for https://grading.test"
    failures = dict(journal.user_notices.failures(m.incident_id))
    assert failures["bounce@example.org"].startswith("550")
    assert failures["grey@example.org"].startswith("451")  # after 5 temporary refusals
    grey = journal.db.execute("SELECT attempts FROM user_notices WHERE address = ?",
                              ("grey@example.org",)).fetchone()[0]
    assert grey == user_mail.TEMP_TRIES
    # Run again: nothing is left, nobody is mailed twice.
    assert asyncio.run(m.run(time.monotonic() + 60)).sent == 20
    assert len(handler.accepted) == 20


def test_a_server_that_takes_nothing_holds_with_the_counts_and_approval_resumes(
        tmp_path: Path, server: tuple[Refusing, int], monkeypatch: pytest.MonkeyPatch) -> None:
    handler, port = server
    monkeypatch.setattr(user_mail, "GIVE_UP_AFTER", 0.5)
    journal = Journal(tmp_path / "journal.sqlite3")
    users = [f"u{i}@example.org" for i in range(5)]
    down = mailing(journal, free_port(), users)  # nothing listens there
    with pytest.raises(StepHeld) as held:
        asyncio.run(down.run(time.monotonic() + 60))
    assert "the SMTP server took nothing for 0.5s (ConnectionRefusedError" in str(held.value)
    assert f"0 sent, 0 failed, 5 left of 5; `rollbackctl approve {down.incident_id}` mails " \
           "the 5 left, each once" in str(held.value)
    up = Mailing(down.incident_id, "grading", down.event, down.settings,
                 SmtpSettings(host="127.0.0.1", port=port), down.sender, down.host,
                 journal.user_notices)
    assert asyncio.run(up.run(time.monotonic() + 60)).describe() == "5 sent, 0 failed"
    assert sorted(r for r, _ in handler.accepted) == users


def _no_backoff(real: Any) -> Any:
    async def sleep(delay: float, *args: Any) -> Any:
        return await real(min(delay, 0.01), *args)

    return sleep

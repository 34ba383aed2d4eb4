"""kill -9 of the daemon inside an SMTP transaction: the one point where mail is at-least-once.

A real aiosmtpd server kills the daemon from inside the conversation of its first mail:

- at DATA: the server has taken and kept the whole message, and the daemon dies before the 250
  reaches it. The daemon cannot tell this from a server that never answered, so the outbox row
  is still unsent and the restarted daemon sends it again: two copies with one Message-ID (mail
  clients drop the second), built from the same journal row.
- at QUIT: the daemon has read the 250. The outbox journals the mail sent as soon as it reads
  the 250, before it ends the session, so the restarted daemon sends nothing again.

Either way every other mail arrives once per recipient and the journal holds one row per event.
"""

from __future__ import annotations

import email
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import SmtpSink, known_good, wait_for
from tests.reliability.kill9 import SIGKILLED, daemon_for, restart
from tests.reliability.support import delivered, journal_rows, unsent, wait_exit

pytestmark = pytest.mark.e2e


class KillingSink(SmtpSink):
    """The tests' SMTP sink, which SIGKILLs `victim` once, at the first `kill_at` command
    ("DATA": after keeping the message, before answering; "QUIT") after `victim` is set."""

    def __init__(self) -> None:
        self.messages = []
        self.victim: int | None = None
        self.kill_at = "DATA"
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append((list(envelope.rcpt_tos),
                                      email.message_from_bytes(envelope.content)))
                sink.kill("DATA")
                return "250 OK"

            async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
                sink.kill("QUIT")
                return "221 Bye"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def kill(self, command: str) -> None:
        if self.victim is not None and command == self.kill_at:
            os.kill(self.victim, signal.SIGKILL)
            self.victim = None


@pytest.fixture
def killing_smtp() -> Iterator[KillingSink]:
    sink = KillingSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.mark.parametrize(("command", "copies"), [("DATA", 2), ("QUIT", 1)])
def test_a_kill_inside_the_smtp_transaction_sends_again_only_before_the_250(
        workspace: Workspace, killing_smtp: KillingSink, tmp_path: Path, command: str,
        copies: int) -> None:
    ws = workspace
    smtp = killing_smtp
    smtp.kill_at = command
    ws.start()
    # Dry run: the broken deploy opens an incident and mails about it, and nothing else runs,
    # so the kill interrupts the mail and nothing but the mail.
    text = ws.config_toml(smtp.port).replace("[policy]\n", "[policy]\ndry_run = true\n", 1)
    d = daemon_for(tmp_path, text, "at", "").start()  # no step to die in: the sink kills
    try:
        wait_for(lambda: known_good(d, ws.head()), 30, f"v1 known-good\n{d.log_text()[-3000:]}")
        assert d.proc is not None
        smtp.victim = d.proc.pid
        ws.deploy_broken()
        assert wait_exit(d, 60, f"the kill at {command}") == SIGKILLED
        ((_, cut),) = smtp.messages  # the server has the first mail
        cut_id = str(cut["Message-ID"])
        # Before the 250 the journal cannot know; after it, it does.
        assert [r["message_id"] for r in unsent(d)] == ([cut_id] if command == "DATA" else [])

        restart(d)
        wait_for(lambda: not unsent(d), 30, f"the outbox to drain\n{d.log_text()[-3000:]}")
        rows = journal_rows(d, "SELECT message_id, recipients FROM outbox")
        # One row per event: a re-send is the same mail, not a second event.
        assert len({r["message_id"] for r in rows}) == len(rows) and cut_id in {
            r["message_id"] for r in rows}
        want = Counter({(rcpt, r["message_id"]): copies if r["message_id"] == cut_id else 1
                        for r in rows for rcpt in json.loads(r["recipients"])})
        wait_for(lambda: delivered(smtp) == want, 10, f"{want} at the server")
        assert Counter(str(m["Message-ID"]) for _, m in smtp.messages)[cut_id] == copies
        # A second copy is the same mail, built again from its journal row: the same headers
        # (Message-ID, Date, threading), the same text; only the MIME boundary is drawn anew.
        same = [m for _, m in smtp.messages if m["Message-ID"] == cut_id]
        assert [headers(m) for m in same] == [headers(cut)] * copies
        assert [texts(m) for m in same] == [texts(cut)] * copies
    finally:
        d.stop()


def headers(m: Message) -> list[tuple[str, str]]:
    return [(k, v) for k, v in m.items() if k != "Content-Type"]


def texts(m: Message) -> list[object]:
    return [part.get_payload(decode=True) for part in m.walk() if not part.is_multipart()]

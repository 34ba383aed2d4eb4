"""rollbackd's own mail to the app's users: throttled, one journal row per user, each user once.

A user is journaled sent only after the SMTP server accepted the mail, and every retry of a
user's mail carries the same Message-ID (`<rollbackd.<incident>.user-notice.<row>@host>`). A
crash between the server's acceptance and the journal's commit is the one way a user gets a
second copy, with the same Message-ID, which receivers that deduplicate by it drop.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation.messages import build_message
from rollbackd.daemon.escalation.smtp import connect
from rollbackd.daemon.journal.user_notices import NoticeCounts, Recipient, UserNotices
from rollbackd.daemon.rollback.base import StepHeld
from rollbackd.daemon.rollback.notice_settings import NoticeEvent, UserNoticeSettings

log = logging.getLogger("rollbackd.user_notices")

GIVE_UP_AFTER = 120.0
"""Seconds of an SMTP server taking nothing before the step holds for a person."""
TEMP_TRIES = 5
"""Tries of an address the server refuses for now (4xx) before it counts as failed."""


def message_id(incident_id: int, row_id: int, host: str) -> str:
    return f"<rollbackd.{incident_id}.user-notice.{row_id}@{host}>"


class _Session:
    """One SMTP session reused for many mails (a connection per mail would cost a handshake,
    and TLS, per user); a fault closes it and the next mail opens a new one."""

    def __init__(self, smtp_settings: Any) -> None:
        self.settings = smtp_settings
        self.smtp: smtplib.SMTP | None = None

    def send(self, msg: Any, to: str) -> tuple[int, str] | None:
        """None: accepted. (code, reply): the server refused this recipient. Raises
        OSError or SMTPException when the server took nothing (down, busy, cut off)."""
        if self.smtp is None:
            self.smtp = connect(self.settings)
        try:
            self.smtp.send_message(msg, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(to, (550, b"refused"))
            return int(code), reply.decode(errors="replace") if isinstance(reply, bytes) \
                else str(reply)
        except (OSError, smtplib.SMTPException):
            self.close()
            raise
        return None

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None


@dataclass
class Mailing:
    """One incident's notice, sent from its journal rows."""

    incident_id: int
    target: str
    event: NoticeEvent
    settings: UserNoticeSettings
    smtp: Any
    """rollbackd.daemon.config.SmtpSettings."""
    sender: str
    host: str
    rows: UserNotices
    hook: Callable[[str, str], None] | None = None
    """Test-only (daemon.test_hooks): called with "notify_users/<n>" and "running" before the
    n-th user's mail is sent, and with "effect" after the server accepted it and before it is
    journaled sent."""
    owner: Callable[[], bool] = lambda: True
    """Several instances: True while this one owns the target; once it does not, the mailing
    stops before the next user (the next owner finds the step running and holds it)."""

    def _message(self, r: Recipient) -> Any:
        t = self.settings.templates.of(self.event)
        values = {"email": r.address, "target": self.target, "incident": self.incident_id,
                  "app_url": self.settings.app_url}
        return build_message(self.sender, [r.address], t.subject.format_map(values),
                             t.body.format_map(values),
                             message_id(self.incident_id, r.id, self.host), None, now_utc())

    async def run(self, deadline: float) -> NoticeCounts:
        """Mail every queued user, at most `settings.rate` a second, until none is left;
        StepHeld when the server takes nothing for GIVE_UP_AFTER or `deadline` (monotonic)
        passes: what was sent stays sent, an approval mails the rest."""
        session = _Session(self.smtp)
        gap = 1.0 / self.settings.rate
        next_at = time.monotonic()
        done = self.rows.counts(self.incident_id)
        n = done.sent + done.failed
        failing_since: float | None = None
        try:
            while batch := self.rows.pending(self.incident_id):
                for r in batch:
                    if not self.owner():
                        raise asyncio.CancelledError("ownership of the target was lost")
                    if time.monotonic() > deadline:
                        self._hold(f"user_notices.timeout ({self.settings.timeout:g}s) "
                                   "passed")
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    # Spaced from the last start, never bunched to catch up after a stall.
                    next_at = max(next_at + gap, time.monotonic())
                    if self.hook:
                        self.hook(f"notify_users/{n + 1}", "running")
                    try:
                        refused = await asyncio.to_thread(session.send, self._message(r),
                                                          r.address)
                    except (OSError, smtplib.SMTPException) as exc:
                        why = f"{type(exc).__name__}: {exc}"
                        self.rows.attempted(r.id, why)
                        failing_since = failing_since or time.monotonic()
                        if time.monotonic() - failing_since > GIVE_UP_AFTER:
                            self._hold(f"the SMTP server took nothing for {GIVE_UP_AFTER:g}s "
                                       f"({why})")
                        log.warning("target=%s incident=%d user_notice status=retry reason=%s",
                                    self.target, self.incident_id, why)
                        await asyncio.sleep(min(2.0 ** min(r.attempts, 5), 30.0))
                        break  # read the batch again: this user is still first
                    failing_since = None
                    n += 1
                    if refused is not None and refused[0] < 500 and r.attempts + 1 < TEMP_TRIES:
                        # A temporary refusal (greylisting, a full mailbox): tried again later.
                        self.rows.attempted(r.id, f"{refused[0]} {refused[1]}")
                        continue
                    if refused is not None:
                        self.rows.failed(r.id, f"{refused[0]} {refused[1]}")
                        continue
                    if self.hook:
                        self.hook(f"notify_users/{n}", "effect")
                    self.rows.sent(r.id)
        finally:
            await asyncio.to_thread(session.close)
        return self.rows.counts(self.incident_id)

    def _hold(self, why: str) -> NoReturn:
        c = self.rows.counts(self.incident_id)
        raise StepHeld(f"user notices stopped: {why}; {c.describe()} of {c.total:,}; "
                       f"`rollbackctl approve {self.incident_id}` mails the {c.queued:,} left, "
                       "each once")

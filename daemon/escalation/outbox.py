"""The outbox: mails are journaled first, then sent and retried with backoff until accepted."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import socket
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate

from tenacity import wait_exponential, wait_random

from daemon.config import Config
from daemon.journal.store import Journal, now_utc

log = logging.getLogger("rollbackd.mail")

# Backoff between attempts of one message: 2 s doubling to 5 min, with jitter against herds.
_BACKOFF = wait_exponential(multiplier=1, exp_base=2, min=2, max=300) + wait_random(0, 1)


def _retry_delay(attempts: int) -> float:
    class _State:  # the one attribute tenacity's wait strategies read
        attempt_number = attempts

    return float(_BACKOFF(_State()))  # type: ignore[arg-type]


class Outbox:
    def __init__(self, journal: Journal, config: Config) -> None:
        self.journal = journal
        self.config = config
        self._wake = asyncio.Event()
        self.host = socket.getfqdn() or "localhost"

    def recipients(self) -> list[str]:
        seen: dict[str, None] = {}
        for contact in self.config.contacts.values():
            for addr in contact.emails:
                seen.setdefault(addr, None)
        return list(seen)

    def enqueue(self, incident_id: int | None, event: str, subject: str, body: str) -> None:
        to = self.recipients()
        if not to:
            log.warning("mail=%s skipped reason=no contacts configured", event)
            return
        # Stable per incident and event: a retried send carries the same Message-ID.
        message_id = f"<rollbackd.{incident_id or 0}.{event}@{self.host}>"
        self.journal.enqueue_mail(message_id, incident_id, to, subject, body)
        self._wake.set()

    def _build(self, row: dict[str, object]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.config.smtp.sender
        msg["To"] = ", ".join(json.loads(str(row["recipients"])))
        msg["Subject"] = str(row["subject"])
        msg["Message-ID"] = str(row["message_id"])
        msg["Date"] = formatdate(localtime=False)
        if row["incident_id"]:
            # One thread per incident: every mail refers to the incident's first message.
            root = f"<rollbackd.{row['incident_id']}.opened@{self.host}>"
            if root != row["message_id"]:
                msg["In-Reply-To"] = root
                msg["References"] = root
        msg.set_content(str(row["body"]))
        return msg

    def _send(self, msg: EmailMessage) -> None:
        s = self.config.smtp
        cls = smtplib.SMTP_SSL if s.tls else smtplib.SMTP
        with cls(s.host, s.port, timeout=s.timeout) as smtp:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username and s.password_file:
                smtp.login(s.username, s.password_file.value)
            smtp.send_message(msg)

    async def flush(self, now: datetime | None = None) -> int:
        """Send what is due; returns how many were accepted. Failures wait for their retry."""
        sent = 0
        for row in self.journal.due_mail(now or now_utc()):
            msg = self._build(dict(row))
            try:
                await asyncio.to_thread(self._send, msg)
            except (OSError, smtplib.SMTPException) as exc:
                delay = _retry_delay(row["attempts"] + 1)
                self.journal.mail_failed(row["id"], f"{type(exc).__name__}: {exc}",
                                         now_utc() + timedelta(seconds=delay))
                log.warning("mail=%s status=retry in=%.0fs reason=%s", row["message_id"], delay,
                            type(exc).__name__)
                break  # the server is likely down for all of them; keep order per incident
            self.journal.mail_sent(row["id"])
            sent += 1
            log.info("mail=%s status=sent subject=%r", row["message_id"], row["subject"])
        return sent

    async def run(self, poll: float = 2.0) -> None:
        """Background sender: wakes on enqueue or every `poll` seconds for retries."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), poll)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the sender must outlive any one bad message
                log.exception("mail status=error reason=unexpected")

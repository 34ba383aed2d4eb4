"""The outbox: mails are journaled first, then sent and retried with backoff until accepted."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from tenacity import wait_exponential, wait_random

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.config import Config
from rollbackd.daemon.escalation import redact, routing, storm
from rollbackd.daemon.escalation.messages import build_message
from rollbackd.daemon.escalation.notices import Notice, digest
from rollbackd.daemon.escalation.settings import Condition, EventKind
from rollbackd.daemon.escalation.smtp import deliver
from rollbackd.daemon.journal import Journal, OutboxMail

log = logging.getLogger("rollbackd.mail")

# Backoff between attempts of one message: 2 s doubling to 5 min, with jitter against herds.
_BACKOFF = wait_exponential(multiplier=1, exp_base=2, min=2, max=300) + wait_random(0, 1)

NEEDS_PERSON = frozenset({"awaiting_approval", "escalated", "held", "failed"})
"""Incident states in which a person must act: their mails start the tier ladder."""


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

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        # Whatever config mail is built from, its secrets are scrubbed from mail and reports.
        self._config = config
        redact.remember(config)

    def recipients(self) -> list[str]:
        """Every configured address, each once (routing picks from these per mail)."""
        seen: dict[str, None] = {}
        for contact in self.config.contacts.values():
            for addr in contact.emails:
                seen.setdefault(addr, None)
        return list(seen)

    def message_id(self, incident_id: int | None, event: str) -> str:
        # Stable per incident and event: a retried or replayed send carries the same Message-ID.
        return f"<rollbackd.{incident_id or 0}.{event}@{self.host}>"

    def facts(self, incident_id: int | None, kind: EventKind) -> routing.MailFacts:
        ctx = self.journal.incidents.mail_context(incident_id) if incident_id else None
        if ctx is None:
            return routing.MailFacts(kind)
        return routing.MailFacts(kind, ctx.incident_class, routing.conditions(
            kind, ctx.reason, ctx.rollback_failed, ctx.breaker_open))

    def route(self, incident_id: int | None, kind: EventKind,
              extra: frozenset[Condition] = frozenset()) -> tuple[str, ...]:
        """Who gets this mail: the routed roles up to the incident's tier, plus anyone paged.
        `extra`: conditions the sender knows of (a limit that just refused a rollback)."""
        reached = self.journal.escalations.of(incident_id) if incident_id else None
        tier, paged = reached or (1, [])
        facts = self.facts(incident_id, kind)
        if extra:
            facts = replace(facts, conditions=facts.conditions | extra)
        return routing.recipients(self.config.escalation, self.config.contacts, facts, tier,
                                  paged)

    def send(self, notice: Notice, *, recipients: Sequence[str] | None = None) -> tuple[str, ...]:
        """Journal one notice's mail (or hold it for a storm digest); returns its recipients."""
        incident_id, event = notice.incident_id, notice.event
        subject, body = notice.subject, notice.body
        if recipients is not None:
            to = tuple(recipients)
        elif notice.everyone:
            to = tuple(self.recipients())
        else:
            to = self.route(incident_id, notice.route_as, notice.conditions)
        if not to:
            log.warning("mail=%s skipped reason=no contacts configured", event)
            return ()
        subject, body = redact.redact(subject), redact.redact(body)
        message_id = self.message_id(incident_id, event)
        esc = self.config.escalation
        if incident_id and storm.grouped(
                self.journal.incidents.storm_rank(incident_id, esc.storm_window), esc.storm_max):
            self.journal.mail.hold(message_id, incident_id, event, list(to), subject, body)
            log.info("mail=%s status=held reason=storm incident=%d", message_id, incident_id)
        else:
            self.journal.mail.enqueue(message_id, incident_id, list(to), subject, body)
        ctx = self.journal.incidents.mail_context(incident_id) if incident_id else None
        if incident_id and ctx and ctx.state in NEEDS_PERSON and not ctx.acked_at:
            self.journal.escalations.start(incident_id, ctx.state)
        self._wake.set()
        return to

    def _collect_digest(self, now: datetime) -> None:
        held = self.journal.mail.held_pending()
        esc = self.config.escalation
        if not storm.digest_due(held, now, esc.digest_delay):
            return
        notice, to = digest(held, esc.storm_max, esc.storm_window)
        message_id = f"<rollbackd.{notice.event.replace('-', '.', 1)}@{self.host}>"
        self.journal.mail.enqueue_digest([h.id for h in held], message_id, to, notice.subject,
                                         notice.body)
        log.info("mail=%s status=queued digest_of=%d", message_id, len(held))

    def _build(self, mail: OutboxMail) -> Any:
        root = self.journal.mail.thread_root(mail.incident_id) if mail.incident_id else None
        return build_message(self.config.smtp.sender, list(mail.recipients), mail.subject,
                             mail.body, mail.message_id, root, mail.created_at)

    async def _send_one(self, mail: OutboxMail) -> str:
        """Try one mail: "sent", "partly" (some recipients refused) or "failed" (none taken)."""
        to = list(mail.recipients)
        try:
            refused = await asyncio.to_thread(deliver, self.config.smtp, self._build(mail), to)
        except (OSError, smtplib.SMTPException) as exc:
            delay = _retry_delay(mail.attempts + 1)
            self.journal.mail.failed(mail.id, f"{type(exc).__name__}: {exc}",
                                     now_utc() + timedelta(seconds=delay))
            log.warning("mail=%s status=retry in=%.0fs reason=%s", mail.message_id, delay,
                        type(exc).__name__)
            return "failed"
        if refused:
            # Accepted for some: only the refused are tried again, so nobody gets it twice.
            delay = _retry_delay(mail.attempts + 1)
            self.journal.mail.partly_sent(mail.id, sorted(refused), f"refused: {refused}",
                                          now_utc() + timedelta(seconds=delay))
            log.warning("mail=%s status=partly-sent refused=%d in=%.0fs", mail.message_id,
                        len(refused), delay)
            return "partly"
        self.journal.mail.sent(mail.id)
        log.info("mail=%s status=sent recipients=%d subject=%r", mail.message_id, len(to),
                 mail.subject)
        return "sent"

    async def flush(self, now: datetime | None = None) -> int:
        """Send what is due; returns how many were accepted. Failures wait for their retry."""
        now = now or now_utc()
        self._collect_digest(now)
        sent, tried = 0, set()
        while True:
            # Re-read after each round: sending an incident's mail makes its next one eligible.
            due = [m for m in self.journal.mail.due(now) if m.id not in tried]
            if not due:
                return sent
            for mail in due:
                tried.add(mail.id)
                outcome = await self._send_one(mail)
                if outcome == "failed":
                    return sent  # the server is likely down for all of them; retry later
                sent += outcome == "sent"

    async def run(self, poll: float = 2.0) -> None:
        """Background sender: wakes on enqueue or every `poll` seconds for retries and digests."""
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

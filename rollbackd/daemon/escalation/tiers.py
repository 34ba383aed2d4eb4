"""Tiers: an escalated incident nobody acknowledges in its tier's timeout pages the next tier."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from rollbackd.daemon.clock import now_utc, reconcile
from rollbackd.daemon.escalation import notices, routing
from rollbackd.daemon.escalation.outbox import NEEDS_PERSON, Outbox
from rollbackd.daemon.journal.escalations import Escalations

log = logging.getLogger("rollbackd.escalation")


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TierChecker:
    """Walks unacknowledged incidents up the tiers. The journal remembers the tier reached, so a
    restart neither pages a tier twice nor forgets one (each tier's mail has a stable id)."""

    def __init__(self, ladders: Escalations, outbox: Outbox) -> None:
        self.ladders = ladders
        """The journal's ladders (in a cluster: those of the targets this instance owns)."""
        self.outbox = outbox  # its config is the live one: a reload changes contacts for both

    def check(self, now: datetime | None = None) -> int:
        """Page the next tier of every incident whose tier timed out; returns how many."""
        now = now or now_utc()
        cfg = self.outbox.config
        paged = 0
        for row in self.ladders.waiting(NEEDS_PERSON):
            tier, since = row.tier, reconcile(row.since, now) or now
            timeout = cfg.escalation.timeout_for(tier)
            if now - since < timedelta(seconds=timeout):
                continue
            nxt = routing.next_tier(cfg.contacts, tier)
            if nxt is None:
                continue  # the top tier has it; there is nobody further to page
            incident_id = row.incident_id
            facts = self.outbox.facts(incident_id, "escalated")
            to = routing.tier_recipients(cfg.escalation, cfg.contacts, facts, nxt)
            waited = (now - since).total_seconds()
            # Mail first, then the step: a crash in between re-enqueues the same Message-ID,
            # which the outbox ignores, and then records the step.
            self.outbox.send(notices.tier_page(row, nxt, _age(waited), _age(timeout)),
                             recipients=to)
            before = self.ladders.of(incident_id)
            everyone = list(dict.fromkeys([*(before[1] if before else []), *to]))
            self.ladders.step(incident_id, nxt, now, everyone)
            log.warning("incident=%d target=%s status=escalated tier=%d unacked_for=%s "
                        "recipients=%d", incident_id, row.target, nxt, _age(waited), len(to))
            paged += 1
        return paged

    async def run(self) -> None:
        """Background check every `escalation.check_interval` seconds."""
        while True:
            await asyncio.sleep(self.outbox.config.escalation.check_interval)
            try:
                self.check()
            except Exception:  # escalation must outlive any one bad row
                log.exception("escalation status=error reason=unexpected")

"""Escalation mail once across instances: a mail is claimed in a transaction before it is sent.

Every instance runs the outbox sender. Before sending, it claims the outbox row
(rollbackd/daemon/journal/claims.py); a row that is sent, being claimed this instant, or claimed by
another instance less than `ttl` ago is skipped. The claim holds while the SMTP conversation
runs; `mail.sent` then marks the row, and a failed attempt gives the claim back. A sender that
dies mid-send leaves its claim to expire after `ttl`, and another instance retries the mail
(the same Message-ID).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.config import Config
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal import Journal, Ladder, OutboxMail
from rollbackd.daemon.journal.claims import MailClaims
from rollbackd.daemon.journal.escalations import Escalations

if TYPE_CHECKING:  # psycopg loads only for a daemon whose journal is on PostgreSQL
    from rollbackd.daemon.journal.pg import PgConnection

log = logging.getLogger("rollbackd.mail")


def pg_connection(journal: Journal) -> PgConnection:
    from rollbackd.daemon.journal.pg import PgConnection

    db: Any = journal.db
    if not isinstance(db, PgConnection):
        raise TypeError("the cluster needs the journal on PostgreSQL")
    return db


class ClaimingOutbox(Outbox):
    """The outbox of one of several instances: sends a mail only under its own claim."""

    def __init__(self, journal: Journal, config: Config, instance: str) -> None:
        super().__init__(journal, config)
        self.instance = instance
        self.claims = MailClaims(pg_connection(journal))

    @property
    def claim_ttl(self) -> float:
        # Longer than any one SMTP conversation (connect, TLS, DATA): each is bounded by timeout.
        return max(60.0, 3 * self.config.smtp.timeout)

    async def _send_one(self, mail: OutboxMail) -> str:
        current = self.claims.claim(mail.id, self.instance, self.claim_ttl)
        if current is None:
            log.debug("mail=%s status=skipped reason=sent or claimed by another instance",
                      mail.message_id)
            return "claimed"
        outcome = await super()._send_one(current)
        if outcome != "sent":
            self.claims.release(mail.id, self.instance)
        return outcome


class OwnedLadders(Escalations):
    """The escalation ladders as the tier checker of one instance sees them: only those of the
    targets it owns, so each unacknowledged incident pages its next tier once."""

    def __init__(self, journal: Journal, owned: Any) -> None:
        super().__init__(journal.database)
        self._owned = owned

    def waiting(self, states: frozenset[str]) -> list[Ladder]:
        mine = set(self._owned())
        return [r for r in super().waiting(states) if r.target in mine]

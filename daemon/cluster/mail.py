"""Escalation mail once across instances: a mail is claimed in a transaction before it is sent.

Every instance runs the outbox sender. Before sending, it locks the outbox row with
`SELECT ... FOR UPDATE SKIP LOCKED` and records a claim (who, when) in the same transaction;
a row that is sent, being claimed this instant, or claimed by another instance less than
`ttl` ago is skipped. The claim holds while the SMTP conversation runs; `mail_sent` then marks
the row, and a failed attempt gives the claim back. A sender that dies mid-send leaves its
claim to expire after `ttl`, and another instance retries the mail (the same Message-ID).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.escalation.outbox import Outbox
from daemon.journal.store import Journal

if TYPE_CHECKING:  # psycopg loads only for a daemon whose journal is on PostgreSQL
    from daemon.journal.pg import PgConnection

log = logging.getLogger("rollbackd.mail")


def pg_connection(journal: Journal) -> PgConnection:
    from daemon.journal.pg import PgConnection

    db: Any = journal.db
    if not isinstance(db, PgConnection):
        raise TypeError("the cluster needs the journal on PostgreSQL")
    return db


def claim_mail(db: PgConnection, outbox_id: int, instance: str,
               ttl: float) -> dict[str, Any] | None:
    """The outbox row as it is now, claimed for `instance`; None if it is not ours to send."""
    conn = db.ready()
    with conn.transaction():
        row = conn.execute("SELECT * FROM outbox WHERE id = %s AND sent_at IS NULL"
                           " FOR UPDATE SKIP LOCKED", (outbox_id,)).fetchone()
        if row is None:
            return None  # sent, or another instance is claiming it right now
        got = conn.execute(
            "INSERT INTO outbox_claims (outbox_id, claimed_by, claimed_at)"
            " VALUES (%s, %s, clock_timestamp()) ON CONFLICT (outbox_id) DO UPDATE"
            " SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at"
            " WHERE outbox_claims.claimed_by = excluded.claimed_by"
            " OR outbox_claims.claimed_at < clock_timestamp() - make_interval(secs => %s)"
            " RETURNING outbox_id", (outbox_id, instance, ttl)).fetchone()
        return dict(row) if got is not None else None


def release_mail(db: PgConnection, outbox_id: int, instance: str) -> None:
    db.ready().execute("DELETE FROM outbox_claims WHERE outbox_id = %s AND claimed_by = %s",
                       (outbox_id, instance))


class ClaimingOutbox(Outbox):
    """The outbox of one of several instances: sends a mail only under its own claim."""

    def __init__(self, journal: Journal, config: Config, instance: str) -> None:
        super().__init__(journal, config)
        self.instance = instance
        self.db = pg_connection(journal)

    @property
    def claim_ttl(self) -> float:
        # Longer than any one SMTP conversation (connect, TLS, DATA): each is bounded by timeout.
        return max(60.0, 3 * self.config.smtp.timeout)

    async def _send_one(self, row: dict[str, Any]) -> str:
        current = claim_mail(self.db, int(row["id"]), self.instance, self.claim_ttl)
        if current is None:
            log.debug("mail=%s status=skipped reason=sent or claimed by another instance",
                      row["message_id"])
            return "claimed"
        outcome = await super()._send_one(current)
        if outcome != "sent":
            release_mail(self.db, int(row["id"]), self.instance)
        return outcome


class OwnedLadders:
    """The journal as the tier checker of one instance sees it: only the escalation ladders of
    the targets it owns, so each unacknowledged incident pages its next tier once."""

    def __init__(self, journal: Journal, owned: Any) -> None:
        self._journal = journal
        self._owned = owned

    def ladders_waiting(self, states: frozenset[str]) -> list[Any]:
        mine = set(self._owned())
        return [r for r in self._journal.ladders_waiting(states) if r["target"] in mine]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

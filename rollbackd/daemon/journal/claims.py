"""Outbox claims on the PostgreSQL journal: which of several instances sends a mail right now.

A mail is claimed in a transaction before it is sent: the outbox row is locked with
`SELECT ... FOR UPDATE SKIP LOCKED` and a claim (who, when) recorded in the same transaction;
a row that is sent, being claimed this instant, or claimed by another instance less than `ttl`
ago is not claimed. The outbox_claims table belongs to the cluster's schema
(rollbackd/daemon/cluster/session.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rollbackd.daemon.journal.mail import OutboxMail

if TYPE_CHECKING:  # psycopg loads only for a daemon whose journal is on PostgreSQL
    from rollbackd.daemon.journal.pg import PgConnection


class MailClaims:
    def __init__(self, db: PgConnection) -> None:
        self.db = db

    def claim(self, outbox_id: int, instance: str, ttl: float) -> OutboxMail | None:
        """The outbox row as it is now, claimed for `instance`; None if it is not ours to send."""
        conn = self.db.ready()
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
            return OutboxMail.from_row(row) if got is not None else None

    def release(self, outbox_id: int, instance: str) -> None:
        """A failed attempt gives the claim back: the next due retry may be anyone's."""
        self.db.ready().execute(
            "DELETE FROM outbox_claims WHERE outbox_id = %s AND claimed_by = %s",
            (outbox_id, instance))

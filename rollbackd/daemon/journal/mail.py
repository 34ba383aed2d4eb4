"""Escalation mail in the journal: the outbox (sent and retried until accepted), the mails a
storm holds back, and the digests that list them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts


@dataclass(frozen=True)
class OutboxMail:
    id: int
    message_id: str
    incident_id: int | None
    recipients: tuple[str, ...]
    subject: str
    body: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OutboxMail:
        return cls(int(r["id"]), r["message_id"], r["incident_id"],
                   tuple(json.loads(r["recipients"])), r["subject"], r["body"],
                   dt(r["created_at"]) or now_utc(), int(r["attempts"]),
                   dt(r["next_attempt_at"]) or now_utc(), dt(r["sent_at"]), r["last_error"])


@dataclass(frozen=True)
class HeldMail:
    """A mail a storm held back for a digest, with what the digest says of its incident."""

    id: int
    message_id: str
    incident_id: int | None
    event: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    created_at: datetime
    target: str | None
    incident_class: str | None
    state: str | None


@dataclass(frozen=True)
class OutboxStats:
    sent: int
    queued: int
    failing: int
    """Queued after a failed attempt."""
    failed_attempts: int
    """Delivery attempts the SMTP server did not accept."""


class Mail:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the outbox ---------------------------------------------------------------------------

    def enqueue(self, message_id: str, incident_id: int | None, recipients: list[str],
                subject: str, body: str) -> None:
        """Journal a mail; one with the same Message-ID is already there: nothing happens."""
        at = ts(now_utc())
        with self.db.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, incident_id, recipients, subject, body,"
                " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, incident_id, json.dumps(recipients), subject, body, at, at),
            )

    def due(self, now: datetime, limit: int = 20) -> list[OutboxMail]:
        """Due mail, but never a mail while an earlier one of its incident is still unsent: a
        mail waiting out its backoff holds back the rest of its incident's thread."""
        rows = self.db.execute(
            "SELECT * FROM outbox o WHERE o.sent_at IS NULL AND o.next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.incident_id = o.incident_id"
            " AND p.sent_at IS NULL AND p.id < o.id) ORDER BY o.id LIMIT ?", (ts(now), limit),
        ).fetchall()
        return [OutboxMail.from_row(r) for r in rows]

    def sent(self, outbox_id: int) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                       (ts(now_utc()), outbox_id))

    def failed(self, outbox_id: int, error: str, next_attempt: datetime) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?", (error, ts(next_attempt), outbox_id),
            )

    def partly_sent(self, outbox_id: int, remaining: list[str], error: str,
                    next_attempt: datetime) -> None:
        """Some recipients were accepted: only the refused ones are tried again."""
        with self.db.tx() as db:
            db.execute(
                "UPDATE outbox SET recipients = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ? WHERE id = ?",
                (json.dumps(remaining), error, ts(next_attempt), outbox_id),
            )

    def counts(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT SUM(sent_at IS NOT NULL), SUM(sent_at IS NULL) FROM outbox").fetchone()
        return {"sent": row[0] or 0, "queued": row[1] or 0}

    def stats(self) -> OutboxStats:
        sent, queued, failing, failed = self.db.execute(
            "SELECT SUM(sent_at IS NOT NULL), SUM(sent_at IS NULL),"
            " SUM(sent_at IS NULL AND last_error IS NOT NULL),"
            " SUM(attempts - (sent_at IS NOT NULL)) FROM outbox").fetchone()
        return OutboxStats(sent or 0, queued or 0, failing or 0, max(0, failed or 0))

    def since(self, incident_id: int, since: datetime) -> list[str]:
        """Message-IDs of the incident's mail queued (or held for a digest) at or after `since`."""
        rows = self.db.execute(
            "SELECT message_id FROM outbox WHERE incident_id = ? AND created_at >= ?"
            " UNION SELECT message_id FROM mail_held WHERE incident_id = ? AND created_at >= ?",
            (incident_id, ts(since), incident_id, ts(since)))
        return sorted(str(r[0]) for r in rows)

    def thread_root(self, incident_id: int) -> str | None:
        """The Message-ID of the first mail actually enqueued for the incident."""
        row = self.db.execute("SELECT message_id FROM outbox WHERE incident_id = ?"
                              " ORDER BY id LIMIT 1", (incident_id,)).fetchone()
        return str(row[0]) if row else None

    def incident_mailed(self, incident_id: int) -> bool:
        """Any mail of the incident, sent, queued or held."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE incident_id = ?)"
            " OR EXISTS (SELECT 1 FROM mail_held WHERE incident_id = ?)",
            (incident_id, incident_id)).fetchone()
        return bool(row[0])

    # -- storms: held mail and digests ----------------------------------------------------------

    def hold(self, message_id: str, incident_id: int, event: str, recipients: list[str],
             subject: str, body: str) -> None:
        at = ts(now_utc())
        with self.db.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO mail_held (message_id, incident_id, event, recipients,"
                " subject, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, incident_id, event, json.dumps(recipients), subject, body, at),
            )

    def held_pending(self) -> list[HeldMail]:
        """Held mails no digest has listed yet, oldest first."""
        rows = self.db.execute(
            "SELECT h.*, i.target, i.incident_class, i.state FROM mail_held h"
            " LEFT JOIN incidents i ON i.id = h.incident_id"
            " WHERE h.digest_message_id IS NULL ORDER BY h.id").fetchall()
        return [HeldMail(int(r["id"]), r["message_id"], r["incident_id"], r["event"],
                         tuple(json.loads(r["recipients"])), r["subject"], r["body"],
                         dt(r["created_at"]) or now_utc(), r["target"], r["incident_class"],
                         r["state"]) for r in rows]

    def enqueue_digest(self, held_ids: list[int], message_id: str, recipients: list[str],
                       subject: str, body: str) -> None:
        """The digest and the marks on what it lists, in one commit: listed exactly once."""
        at = ts(now_utc())
        marks = ",".join("?" * len(held_ids))
        with self.db.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, incident_id, recipients, subject, body,"
                " created_at, next_attempt_at) VALUES (?, NULL, ?, ?, ?, ?, ?)",
                (message_id, json.dumps(recipients), subject, body, at, at),
            )
            db.execute(f"UPDATE mail_held SET digest_message_id = ? WHERE id IN ({marks})",
                       (message_id, *held_ids))

"""Users told by rollbackd's own mail, one row per user of an incident's notice: queued, then
sent (only once the SMTP server accepted it) or failed (the server refused the address)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, ts


@dataclass(frozen=True)
class Recipient:
    id: int
    address: str
    attempts: int


@dataclass(frozen=True)
class NoticeCounts:
    sent: int = 0
    failed: int = 0
    queued: int = 0
    event: str | None = None

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.queued

    def describe(self) -> str:
        """"2,000 sent, 0 failed" (and what is left, while some are)."""
        text = f"{self.sent:,} sent, {self.failed:,} failed"
        return text + (f", {self.queued:,} left" if self.queued else "")


class UserNotices:
    def __init__(self, db: Database) -> None:
        self.db = db

    def queue(self, incident_id: int, event: str, addresses: Sequence[str]) -> int:
        """Every recipient of the incident's notice in one commit: the list is fixed by the
        first run of the step, and a resumed run finds it whole. Returns the rows added."""
        at = ts(now_utc())
        before = self.counts(incident_id).total
        with self.db.tx() as db:
            for address in addresses:
                db.execute(
                    "INSERT OR IGNORE INTO user_notices (incident_id, address, event, state,"
                    " queued_at) VALUES (?, ?, ?, 'queued', ?)", (incident_id, address, event, at))
        return self.counts(incident_id).total - before

    def pending(self, incident_id: int, limit: int = 500) -> list[Recipient]:
        rows = self.db.execute(
            "SELECT id, address, attempts FROM user_notices WHERE incident_id = ?"
            " AND state = 'queued' ORDER BY id LIMIT ?", (incident_id, limit)).fetchall()
        return [Recipient(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def sent(self, row_id: int) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE user_notices SET state = 'sent', sent_at = ?,"
                       " attempts = attempts + 1, error = NULL WHERE id = ?",
                       (ts(now_utc()), row_id))

    def failed(self, row_id: int, error: str) -> None:
        """The server refused the address for good: counted failed, never tried again."""
        with self.db.tx() as db:
            db.execute("UPDATE user_notices SET state = 'failed', attempts = attempts + 1,"
                       " error = ? WHERE id = ?", (error[:500], row_id))

    def attempted(self, row_id: int, error: str) -> None:
        """A try the server did not take (down, busy): still queued, tried again."""
        with self.db.tx() as db:
            db.execute("UPDATE user_notices SET attempts = attempts + 1, error = ? WHERE id = ?",
                       (error[:500], row_id))

    def counts(self, incident_id: int) -> NoticeCounts:
        rows = self.db.execute("SELECT state, event, COUNT(*) FROM user_notices"
                               " WHERE incident_id = ? GROUP BY state, event",
                               (incident_id,)).fetchall()
        found = {str(r[0]): int(r[2]) for r in rows}
        return NoticeCounts(found.get("sent", 0), found.get("failed", 0), found.get("queued", 0),
                            str(rows[0][1]) if rows else None)

    def failures(self, incident_id: int, limit: int = 5) -> list[tuple[str, str]]:
        """(address, why) of some refused addresses, for the report."""
        rows = self.db.execute("SELECT address, error FROM user_notices WHERE incident_id = ?"
                               " AND state = 'failed' ORDER BY id LIMIT ?",
                               (incident_id, limit)).fetchall()
        return [(str(r[0]), str(r[1] or "")) for r in rows]

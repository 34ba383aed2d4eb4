"""Escalation ladders: the tier each unacknowledged incident has reached, and whom it paged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.daemon.journal.incidents import insert_event


@dataclass(frozen=True)
class Ladder:
    """An escalated incident nobody has acknowledged, with what its next tier's mail says."""

    incident_id: int
    tier: int
    since: datetime
    """When the tier was mailed (or the clock restarted for a new reason)."""
    paged: tuple[str, ...]
    target: str
    incident_class: str
    reason: str
    state: str
    detected_at: datetime


class Escalations:
    def __init__(self, db: Database) -> None:
        self.db = db

    def of(self, incident_id: int) -> tuple[int, list[str]] | None:
        """The tier an incident has reached and the addresses its escalations paged."""
        row = self.db.execute("SELECT tier, paged FROM escalations WHERE incident_id = ?",
                              (incident_id,)).fetchone()
        return (int(row[0]), list(json.loads(row[1]))) if row else None

    def start(self, incident_id: int, state: str) -> None:
        """Tier 1 was mailed now. A new reason to need a person (another state) restarts the
        clock, at the tier already reached."""
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO escalations (incident_id, tier, since, state) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (incident_id) DO UPDATE SET since = excluded.since,"
                " state = excluded.state WHERE escalations.state != excluded.state",
                (incident_id, ts(now_utc()), state),
            )

    def waiting(self, states: frozenset[str]) -> list[Ladder]:
        """Escalated incidents nobody has acknowledged, still in a state that needs a person."""
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            "SELECT e.incident_id, e.tier, e.since, e.paged, i.target, i.incident_class,"
            " i.reason, i.state, i.detected_at FROM escalations e JOIN incidents i"
            f" ON i.id = e.incident_id WHERE i.acked_at IS NULL AND i.state IN ({marks})"
            " ORDER BY e.incident_id", sorted(states),
        ).fetchall()
        return [Ladder(int(r["incident_id"]), int(r["tier"]), dt(r["since"]) or now_utc(),
                       tuple(json.loads(r["paged"])), r["target"], r["incident_class"],
                       r["reason"], r["state"], dt(r["detected_at"]) or now_utc())
                for r in rows]

    def step(self, incident_id: int, tier: int, since: datetime, paged: list[str]) -> None:
        """The incident paged `tier` at `since`: recorded on the ladder and its timeline."""
        with self.db.tx() as db:
            db.execute("UPDATE escalations SET tier = ?, since = ?, paged = ?"
                       " WHERE incident_id = ?", (tier, ts(since), json.dumps(paged), incident_id))
            insert_event(self.db, incident_id, "paged", f"tier {tier}: {', '.join(paged)}", since)

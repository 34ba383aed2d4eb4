"""Incidents and their timelines: what happened to a target, and when, in the journal."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from rollbackd.daemon.clock import now_utc, stepped
from rollbackd.daemon.journal.db import Database, JournalError, dt, ts
from rollbackd.policies.lifecycle import OPEN_STATES, check_transition


@dataclass(frozen=True)
class Incident:
    id: int
    target: str
    incident_class: str
    state: str
    reason: str
    from_version: str | None
    to_version: str | None
    onset_at: datetime | None
    detected_at: datetime
    started_at: datetime | None
    rolled_back_at: datetime | None
    verified_at: datetime | None
    closed_at: datetime | None
    held_reason: str | None
    evidence: dict[str, Any]

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Incident:
        return cls(
            id=r["id"], target=r["target"], incident_class=r["incident_class"], state=r["state"],
            reason=r["reason"], from_version=r["from_version"], to_version=r["to_version"],
            onset_at=dt(r["onset_at"]), detected_at=dt(r["detected_at"]) or now_utc(),
            started_at=dt(r["started_at"]), rolled_back_at=dt(r["rolled_back_at"]),
            verified_at=dt(r["verified_at"]), closed_at=dt(r["closed_at"]),
            held_reason=r["held_reason"], evidence=json.loads(r["evidence"]),
        )


@dataclass(frozen=True)
class IncidentExtras:
    """What an incident report needs beyond `Incident`: plan, acknowledgement, tier."""

    plan_kind: str | None = None
    plan: Any = None
    """The plan as journaled (plan_to_dict), None before one was chosen."""
    acked_at: datetime | None = None
    automatic: bool | None = None
    tier: int | None = None
    paged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MailContext:
    """What routing needs to know about an incident, in one read."""

    id: int
    target: str
    incident_class: str
    state: str
    reason: str
    acked_at: datetime | None
    detected_at: datetime
    rollback_failed: bool
    """Its timeline has a `failed` event."""
    breaker_open: bool
    """A breaker of its target is open."""


class TimelineEvent(NamedTuple):
    at: datetime
    event: str
    detail: str


class TimelineChange(NamedTuple):
    incident_id: int
    last_id: int
    """The newest timeline row id of the incident."""
    last_at: datetime


@dataclass(frozen=True)
class OpenCount:
    """Open incidents of one target, class and state, and when the oldest was detected."""

    target: str
    incident_class: str
    state: str
    count: int
    oldest_detected_at: datetime | None


def insert_event(db: Database, incident_id: int, event: str, detail: str,
                 at: datetime | None) -> None:
    """One timeline row, inside the caller's transaction. Written while the system clock is
    stepped, it says so: its time is the daemon's own clock, not the system's."""
    step = stepped()
    if step is not None:
        detail += f" [system clock {step:+.0f}s from rollbackd's, which did not step]"
    db.execute("INSERT INTO timeline (incident_id, at, event, detail) VALUES (?, ?, ?, ?)",
               (incident_id, ts(at or now_utc()), event, detail))


class Incidents:
    _UPDATABLE = frozenset({"state", "reason", "plan_kind", "from_version", "to_version",
                            "started_at", "rolled_back_at", "verified_at", "closed_at",
                            "held_reason", "acked_at", "plan"})

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing ------------------------------------------------------------------------------

    def open(self, target: str, incident_class: str, reason: str, onset: datetime | None,
             evidence: dict[str, Any], state: str = "open", automatic: bool = True) -> int:
        at = now_utc()
        with self.db.tx() as db:
            cur = db.execute(
                "INSERT INTO incidents (target, incident_class, state, reason, onset_at,"
                " detected_at, evidence, automatic) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (target, incident_class, state, reason, ts(onset), ts(at),
                 json.dumps(evidence, default=str), int(automatic)),
            )
            incident_id = int(cur.lastrowid or 0)
            insert_event(self.db, incident_id, "detected", reason, at)
        return incident_id

    def add_event(self, incident_id: int, event: str, detail: str = "") -> None:
        with self.db.tx():
            insert_event(self.db, incident_id, event, detail, None)

    def update(self, incident_id: int, event: str | None = None, detail: str = "",
               **fields: Any) -> None:
        """Change columns (a state change only along rollbackd.policies.lifecycle's transitions) and
        record `event` on the timeline, in one transaction."""
        bad = set(fields) - self._UPDATABLE
        if bad:
            raise JournalError(f"not updatable: {sorted(bad)}")
        values = [ts(v) if isinstance(v, datetime) else v for v in fields.values()]
        with self.db.tx() as db:
            if "state" in fields:
                row = db.execute("SELECT state FROM incidents WHERE id = ?",
                                 (incident_id,)).fetchone()
                if row is None:
                    raise JournalError(f"no incident {incident_id}")
                check_transition(row[0], fields["state"])
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE incidents SET {cols} WHERE id = ?", (*values, incident_id))
            if event:
                insert_event(self.db, incident_id, event, detail, None)

    def hold(self, incident_id: int, why: str) -> Incident:
        """Held for a person, saying why; the incident as it is now."""
        self.update(incident_id, "held", why, state="held", held_reason=why)
        inc = self.get(incident_id)
        assert inc is not None
        return inc

    def set_evidence(self, incident_id: int, evidence: dict[str, Any]) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE incidents SET evidence = ? WHERE id = ?",
                       (json.dumps(evidence, default=str), incident_id))
            insert_event(self.db, incident_id, "evidence", "evidence captured", None)

    def mark_manual(self, incident_id: int) -> None:
        """A person took the incident over: its rollback is not counted as an automatic one."""
        with self.db.tx() as db:
            db.execute("UPDATE incidents SET automatic = 0 WHERE id = ?", (incident_id,))

    # -- reading ------------------------------------------------------------------------------

    def get(self, incident_id: int) -> Incident | None:
        row = self.db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return Incident.from_row(row) if row else None

    def open_for(self, target: str) -> Incident | None:
        """The target's newest open incident."""
        marks = ",".join("?" * len(OPEN_STATES))
        row = self.db.execute(
            f"SELECT * FROM incidents WHERE target = ? AND state IN ({marks}) ORDER BY id DESC",
            (target, *sorted(OPEN_STATES)),
        ).fetchone()
        return Incident.from_row(row) if row else None

    def open_of(self, target: str, incident_class: str) -> list[Incident]:
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self.db.execute(
            f"SELECT * FROM incidents WHERE target = ? AND incident_class = ?"
            f" AND state IN ({marks}) ORDER BY id", (target, incident_class, *sorted(OPEN_STATES)))
        return [Incident.from_row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[Incident]:
        rows = self.db.execute("SELECT * FROM incidents ORDER BY id DESC LIMIT ?", (limit,))
        return [Incident.from_row(r) for r in rows]

    def timeline(self, incident_id: int) -> list[TimelineEvent]:
        rows = self.db.execute(
            "SELECT at, event, detail FROM timeline WHERE incident_id = ? ORDER BY id",
            (incident_id,),
        )
        return [TimelineEvent(dt(r["at"]) or now_utc(), r["event"], r["detail"]) for r in rows]

    def rollback_starts(self, target: str) -> tuple[datetime, ...]:
        """When the target's automatic rollbacks started (the rate limit counts these)."""
        rows = self.db.execute(
            "SELECT started_at FROM incidents WHERE target = ? AND automatic = 1"
            " AND started_at IS NOT NULL ORDER BY started_at",
            (target,),
        )
        return tuple(d for r in rows if (d := dt(r[0])))

    def extras(self, incident_id: int) -> IncidentExtras | None:
        row = self.db.execute(
            "SELECT i.plan_kind, i.plan, i.acked_at, i.automatic, e.tier, e.paged"
            " FROM incidents i LEFT JOIN escalations e ON e.incident_id = i.id WHERE i.id = ?",
            (incident_id,)).fetchone()
        if row is None:
            return None
        return IncidentExtras(row["plan_kind"], json.loads(row["plan"] or "null"),
                              dt(row["acked_at"]), bool(row["automatic"]), row["tier"],
                              json.loads(row["paged"] or "[]"))

    def mail_context(self, incident_id: int) -> MailContext | None:
        row = self.db.execute(
            "SELECT i.id, i.target, i.incident_class, i.state, i.reason, i.acked_at,"
            " i.detected_at, EXISTS (SELECT 1 FROM timeline t WHERE t.incident_id = i.id"
            " AND t.event = 'failed') AS rollback_failed, EXISTS (SELECT 1 FROM breakers b"
            " WHERE b.target = i.target AND b.mode = 'open') AS breaker_open"
            " FROM incidents i WHERE i.id = ?", (incident_id,),
        ).fetchone()
        if row is None:
            return None
        return MailContext(row["id"], row["target"], row["incident_class"], row["state"],
                           row["reason"], dt(row["acked_at"]), dt(row["detected_at"]) or now_utc(),
                           bool(row["rollback_failed"]), bool(row["breaker_open"]))

    def timeline_changes(self, after_id: int) -> list[TimelineChange]:
        """Incidents with timeline events after `after_id`: their newest event's id and time."""
        rows = self.db.execute("SELECT incident_id, MAX(id), MAX(at) FROM timeline WHERE id > ?"
                               " GROUP BY incident_id ORDER BY incident_id", (after_id,))
        return [TimelineChange(int(r[0]), int(r[1]), dt(r[2]) or now_utc()) for r in rows]

    def storm_rank(self, incident_id: int, window: float) -> int:
        """How many incidents (this one included) were detected within `window` seconds up to
        this one. Fixed once the incident exists, so its mails are grouped, or not, for good."""
        inc = self.get(incident_id)
        if inc is None:
            return 0
        since = ts(inc.detected_at - timedelta(seconds=window))
        row = self.db.execute("SELECT COUNT(*) FROM incidents WHERE id <= ? AND detected_at > ?",
                              (incident_id, since)).fetchone()
        return int(row[0])

    # -- for the metrics ----------------------------------------------------------------------

    def open_counts(self) -> list[OpenCount]:
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self.db.execute(
            "SELECT target, incident_class, state, COUNT(*), MIN(detected_at) FROM incidents"
            f" WHERE state IN ({marks}) GROUP BY target, incident_class, state",
            sorted(OPEN_STATES)).fetchall()
        return [OpenCount(t, c, s, int(n), dt(d)) for t, c, s, n, d in rows]

    def last_failures(self) -> dict[str, datetime]:
        """When a rollback of each target last failed (its newest `failed` timeline event)."""
        # Every timestamp is UTC ISO text, so MAX() on the text is the latest.
        rows = self.db.execute(
            "SELECT i.target, MAX(t.at) FROM timeline t JOIN incidents i ON i.id = t.incident_id"
            " WHERE t.event = 'failed' GROUP BY i.target")
        return {target: at for target, text in rows if (at := dt(text)) is not None}

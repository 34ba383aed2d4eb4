"""The step journal: each step is journaled `running` before it starts, `done`/`failed` after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.daemon.journal.incidents import Incident, Incidents


@dataclass(frozen=True)
class StepRecord:
    id: int
    incident_id: int
    seq: int
    name: str
    state: str
    idempotent: bool
    started_at: datetime
    duration: float | None
    detail: str


class Steps:
    def __init__(self, db: Database, incidents: Incidents) -> None:
        self.db = db
        self.incidents = incidents
        """Recovery holds the incidents of interrupted steps."""

    def started(self, incident_id: int, seq: int, name: str, idempotent: bool) -> int:
        with self.db.tx() as db:
            cur = db.execute(
                "INSERT INTO steps (incident_id, seq, name, idempotent, state, started_at)"
                " VALUES (?, ?, ?, ?, 'running', ?)",
                (incident_id, seq, name, int(idempotent), ts(now_utc())),
            )
        return int(cur.lastrowid or 0)

    def finished(self, step_id: int, ok: bool, duration: float, detail: str) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE steps SET state = ?, finished_at = ?, duration = ?, detail = ?"
                " WHERE id = ? AND state = 'running'",
                ("done" if ok else "failed", ts(now_utc()), duration, detail, step_id),
            )

    def interrupted(self, step_id: int, detail: str) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE steps SET state = 'interrupted', finished_at = ?, detail = ?"
                " WHERE id = ? AND state = 'running'", (ts(now_utc()), detail, step_id),
            )

    def of(self, incident_id: int) -> list[StepRecord]:
        """The incident's steps in the order they ran."""
        rows = self.db.execute(
            "SELECT * FROM steps WHERE incident_id = ? ORDER BY seq, id", (incident_id,)
        )
        return [
            StepRecord(r["id"], r["incident_id"], r["seq"], r["name"], r["state"],
                       bool(r["idempotent"]), dt(r["started_at"]) or now_utc(), r["duration"],
                       r["detail"])
            for r in rows
        ]

    def running(self, target: str | None = None) -> list[tuple[Incident, StepRecord]]:
        """Steps journaled `running`: at start-up, those a crash cut off. `target`: only that
        target's (an instance of several just became its owner)."""
        sql = "SELECT id, incident_id FROM steps WHERE state = 'running'"
        args: list[str] = []
        if target is not None:
            sql += " AND incident_id IN (SELECT id FROM incidents WHERE target = ?)"
            args.append(target)
        found: list[tuple[Incident, StepRecord]] = []
        for step_id, incident_id in self.db.execute(sql + " ORDER BY id", args).fetchall():
            inc = self.incidents.get(incident_id)
            assert inc is not None
            found.append((inc, next(s for s in self.of(incident_id) if s.id == step_id)))
        return found

    def unclosed(self, target: str | None = None) -> list[Incident]:
        """Incidents in the middle of a plan (remediating, verifying) with no step `running`: at
        start-up, plans a crash cut off between two steps, or after a step's outcome and before
        the incident's end committed. `target`: only that target's."""
        sql = ("SELECT * FROM incidents i WHERE i.state IN ('remediating', 'verifying')"
               " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.incident_id = i.id"
               " AND s.state = 'running')")
        args: list[str] = []
        if target is not None:
            sql += " AND i.target = ?"
            args.append(target)
        return [Incident.from_row(r) for r in self.db.execute(sql + " ORDER BY i.id", args)]

    def settle(self, step_id: int, done: bool, detail: str) -> None:
        """A step a crash cut off, once its effect was checked: found done, or interrupted."""
        with self.db.tx() as db:
            db.execute(
                "UPDATE steps SET state = ?, finished_at = ?, detail = ?"
                " WHERE id = ? AND state = 'running'",
                ("done" if done else "interrupted", ts(now_utc()), detail, step_id),
            )

    def recover_interrupted(self, target: str | None = None) -> list[tuple[Incident, StepRecord]]:
        """Steps left `running` by a crash become `interrupted` and their incidents are held,
        unasked: for incidents no executor can be asked about (rollbackd/daemon/incidents/recovery.py
        checks each step's effect first where it can)."""
        held: list[tuple[Incident, StepRecord]] = []
        for _, step in self.running(target):
            self.settle(step.id, False, step.detail)
            why = (f"step {step.name} was interrupted (daemon stopped while it ran); "
                   "not run again automatically: a person must decide")
            held.append((self.incidents.hold(step.incident_id, why),
                         next(s for s in self.of(step.incident_id) if s.id == step.id)))
        return held

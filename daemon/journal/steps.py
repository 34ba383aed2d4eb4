"""The step journal: each step is journaled `running` before it starts, `done`/`failed` after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from daemon.clock import now_utc
from daemon.journal.db import Database, dt, ts
from daemon.journal.incidents import Incident, Incidents


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

    def recover_interrupted(self, target: str | None = None) -> list[tuple[Incident, StepRecord]]:
        """Steps left `running` by a crash become `interrupted`; their incidents are held.
        `target`: only that target's (an instance of several just became its owner)."""
        sql = "SELECT id, incident_id FROM steps WHERE state = 'running'"
        args: list[str] = []
        if target is not None:
            sql += " AND incident_id IN (SELECT id FROM incidents WHERE target = ?)"
            args.append(target)
        found = self.db.execute(sql, args)
        held: list[tuple[Incident, StepRecord]] = []
        for step_id, incident_id in found.fetchall():
            with self.db.tx() as db:
                db.execute(
                    "UPDATE steps SET state = 'interrupted', finished_at = ? WHERE id = ?",
                    (ts(now_utc()), step_id),
                )
            step = next(s for s in self.of(incident_id) if s.id == step_id)
            why = (f"step {step.name} was interrupted (daemon stopped while it ran); "
                   "not run again automatically: a person must decide")
            self.incidents.update(incident_id, "held", why, state="held", held_reason=why)
            inc = self.incidents.get(incident_id)
            assert inc is not None
            held.append((inc, step))
        return held

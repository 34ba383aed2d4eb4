"""Circuit breakers per target and plan kind, kept across restarts."""

from __future__ import annotations

import json
from typing import NamedTuple

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.policies.breaker import Breaker, BreakerMode


class TargetBreaker(NamedTuple):
    target: str
    plan_kind: str
    breaker: Breaker


class Breakers:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, target: str, plan_kind: str) -> Breaker:
        r = self.db.execute("SELECT * FROM breakers WHERE target = ? AND plan_kind = ?",
                            (target, plan_kind)).fetchone()
        if r is None:
            return Breaker()
        failures = tuple(d for x in json.loads(r["failures"]) if (d := dt(x)))
        return Breaker(BreakerMode(r["mode"]), failures, dt(r["opened_at"]))

    def save(self, target: str, plan_kind: str, b: Breaker) -> None:
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO breakers (target, plan_kind, mode, failures, opened_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target, plan_kind) DO UPDATE SET"
                " mode = excluded.mode, failures = excluded.failures,"
                " opened_at = excluded.opened_at, updated_at = excluded.updated_at",
                (target, plan_kind, b.mode.value, json.dumps([ts(t) for t in b.failures]),
                 ts(b.opened_at), ts(now_utc())),
            )

    def all(self) -> list[TargetBreaker]:
        rows = self.db.execute("SELECT target, plan_kind FROM breakers ORDER BY target").fetchall()
        return [TargetBreaker(t, k, self.get(t, k)) for t, k in rows]

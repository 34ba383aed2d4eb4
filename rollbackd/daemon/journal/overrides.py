"""Operator overrides (pause, silence, maintenance), each with a reason and an expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.policies.overrides import Override, OverrideKind


class Overrides:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, o: Override) -> int:
        with self.db.tx() as db:
            cur = db.execute(
                "INSERT INTO overrides (kind, target, created_at, until, reason, by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (o.kind.value, o.target, ts(now_utc()), ts(o.until), o.reason, o.by),
            )
        return int(cur.lastrowid or 0)

    def end(self, kind: str | None, target: str | None) -> int:
        """End overrides now (all kinds when kind is None; target None: the global ones)."""
        sql = "UPDATE overrides SET ended_at = ? WHERE ended_at IS NULL AND until > ?"
        args: list[Any] = [ts(now_utc()), ts(now_utc())]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " AND target IS ?"
        args.append(target)
        with self.db.tx() as db:
            return db.execute(sql, args).rowcount

    def active(self, now: datetime | None = None) -> tuple[Override, ...]:
        """Overrides neither ended nor expired at `now`."""
        rows = self.db.execute(
            "SELECT * FROM overrides WHERE ended_at IS NULL AND until > ? ORDER BY id",
            (ts(now or now_utc()),),
        )
        return tuple(
            Override(OverrideKind(r["kind"]), r["target"], dt(r["until"]) or now_utc(),
                     r["reason"], r["by"])
            for r in rows
        )

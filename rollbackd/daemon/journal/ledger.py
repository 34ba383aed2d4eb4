"""The known-good ledger: each release a target ran, when it earned known-good, or went bad."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, dt, ts
from rollbackd.policies.ledger import LedgerEntry


@dataclass(frozen=True)
class KnownGood:
    """A target's newest known-good version (newest by first_seen) and when it earned it."""

    target: str
    version: str
    known_good_at: datetime


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def entries(self, target: str) -> list[LedgerEntry]:
        rows = self.db.execute("SELECT * FROM ledger WHERE target = ? ORDER BY first_seen",
                               (target,))
        return [
            LedgerEntry(r["version"], dt(r["first_seen"]) or now_utc(), dt(r["healthy_since"]),
                        dt(r["known_good_at"]), dt(r["bad_at"]), r["alembic_revision"],
                        r["key_fingerprint"], r["config_hash"], r["bad_reason"])
            for r in rows
        ]

    def save(self, target: str, e: LedgerEntry) -> None:
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO ledger (target, version, first_seen, healthy_since, known_good_at,"
                " bad_at, alembic_revision, key_fingerprint, config_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, version) DO UPDATE SET"
                " healthy_since = excluded.healthy_since, known_good_at = excluded.known_good_at,"
                " bad_at = excluded.bad_at, alembic_revision = excluded.alembic_revision,"
                " key_fingerprint = excluded.key_fingerprint, config_hash = excluded.config_hash",
                (target, e.version, ts(e.first_seen), ts(e.healthy_since),
                 ts(e.known_good_at), ts(e.bad_at), e.alembic_revision, e.key_fingerprint,
                 e.config_hash),
            )

    def unmark_bad(self, target: str, version: str) -> bool:
        with self.db.tx() as db:
            cur = db.execute("UPDATE ledger SET bad_at = NULL, bad_reason = NULL"
                             " WHERE target = ? AND version = ?", (target, version))
        return cur.rowcount > 0

    def mark_bad(self, target: str, version: str, reason: str) -> None:
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO ledger (target, version, first_seen, bad_at, bad_reason)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target, version) DO UPDATE SET"
                " bad_at = excluded.bad_at, bad_reason = excluded.bad_reason",
                (target, version, ts(now_utc()), ts(now_utc()), reason),
            )

    def newest_known_good(self) -> list[KnownGood]:
        """Per target, sorted by target (for the metrics)."""
        newest: dict[str, tuple[datetime, str, datetime]] = {}
        for target, ver, first_text, good_text in self.db.execute(
                "SELECT target, version, first_seen, known_good_at FROM ledger"
                " WHERE known_good_at IS NOT NULL AND bad_at IS NULL"):
            first, good = dt(first_text), dt(good_text)
            if first and good and (target not in newest or first > newest[target][0]):
                newest[target] = (first, ver, good)
        return [KnownGood(t, ver, good) for t, (_, ver, good) in sorted(newest.items())]

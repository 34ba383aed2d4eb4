"""The known-good ledger's rules: when a version becomes known-good, which one to roll back to."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LedgerEntry:
    version: str
    first_seen: datetime
    healthy_since: datetime | None = None
    known_good_at: datetime | None = None
    bad_at: datetime | None = None

    @property
    def known_good(self) -> bool:
        return self.known_good_at is not None and self.bad_at is None


def observe(
    entry: LedgerEntry, all_passing: bool, now: datetime, stable_after: float
) -> LedgerEntry:
    """Advance one version's entry by one evaluation of the target's probes."""
    if not all_passing:
        # Stability must be continuous: any failure restarts the clock (known-good stays earned).
        return replace(entry, healthy_since=None)
    since = entry.healthy_since or now
    entry = replace(entry, healthy_since=since)
    if entry.known_good_at is None and entry.bad_at is None:
        if now - since >= timedelta(seconds=stable_after):
            entry = replace(entry, known_good_at=now)
    return entry


def rollback_target(entries: list[LedgerEntry], current: str | None) -> LedgerEntry | None:
    """The newest known-good version first seen before the current one, never a bad one."""
    cur = next((e for e in entries if e.version == current), None)
    candidates = [
        e
        for e in entries
        if e.known_good
        and e.version != current
        and (cur is None or e.first_seen < cur.first_seen)
    ]
    return max(candidates, key=lambda e: e.first_seen, default=None)

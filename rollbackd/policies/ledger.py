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
    alembic_revision: str | None = None
    """The schema revision the version ran against while it was healthy."""
    key_fingerprint: str | None = None
    """Fingerprint (never the key) of the encryption key it ran with."""
    config_hash: str | None = None
    bad_reason: str | None = None

    @property
    def known_good(self) -> bool:
        return self.known_good_at is not None and self.bad_at is None


def observe(
    entry: LedgerEntry, all_passing: bool, now: datetime, stable_after: float,
    alembic_revision: str | None = None, key_fingerprint: str | None = None,
) -> LedgerEntry:
    """Advance one version's entry by one evaluation of the target's probes."""
    if not all_passing:
        # Stability must be continuous: any failure restarts the clock (known-good stays earned).
        return replace(entry, healthy_since=None)
    since = entry.healthy_since or now
    entry = replace(entry, healthy_since=since)
    if entry.known_good_at is None and entry.bad_at is None:
        if now - since >= timedelta(seconds=stable_after):
            # What it ran with when it earned the title: a rollback must find the same again.
            entry = replace(entry, known_good_at=now, alembic_revision=alembic_revision,
                            key_fingerprint=key_fingerprint)
    return entry


def rollback_target(entries: list[LedgerEntry], current: str | None,
                    key_fingerprint: str | None = None) -> LedgerEntry | None:
    """The newest known-good version first seen before the current one, never a bad one.

    With a key fingerprint, a version that ran with another key is skipped: rolling back to it
    would leave encrypted data unreadable.
    """
    cur = next((e for e in entries if e.version == current), None)
    candidates = [
        e
        for e in entries
        if e.known_good
        and e.version != current
        and (cur is None or e.first_seen < cur.first_seen)
        and (key_fingerprint is None or e.key_fingerprint in (None, key_fingerprint))
    ]
    return max(candidates, key=lambda e: e.first_seen, default=None)


def redeployed_bad(entries: list[LedgerEntry], current: str | None) -> LedgerEntry | None:
    """The current version's entry if it was rolled back before: reported at once."""
    return next((e for e in entries if e.version == current and e.bad_at is not None), None)

"""backup_freshness: the newest verified backup of a target, from the journal, is recent enough."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import Field

from probes.base import AbsolutePath, BaseProbe, PositiveDuration, ProbeSettings
from probes.observation import Observation, Symptom
from probes.sqlite_integrity import open_read_only


class BackupFreshnessSettings(ProbeSettings):
    kind: Literal["backup_freshness"] = "backup_freshness"
    journal: AbsolutePath
    """Absolute path of the daemon's journal (state_dir/journal.sqlite3); opened read-only."""
    target: str = Field(min_length=1)
    """The target whose backups count, as named in the journal's backups table."""
    backup_kind: str | None = None
    """Only backups of this kind (e.g. "sqlite", "fernet_key"); all kinds when unset."""
    max_age: PositiveDuration
    """The newest verified backup may be at most this old (from its created_at)."""


class JournalUnusable(Exception):
    """The journal cannot be read as one: the probe's problem, not evidence about backups."""


@dataclass(frozen=True)
class _Newest:
    created: datetime | None
    verified: int
    unparsable: int


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp; one without an offset is taken as UTC, as the journal writes UTC."""
    at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def newest_verified(s: BackupFreshnessSettings) -> _Newest:
    """Blocking (SQLite), so called in a thread."""
    if not s.journal.exists():
        raise JournalUnusable(f"journal file missing: {s.journal}")
    query = ("SELECT created_at FROM backups WHERE target = ? AND verified_at IS NOT NULL "
             "AND verified_at != ''")
    args: tuple[str, ...] = (s.target,)
    if s.backup_kind is not None:
        query, args = query + " AND kind = ?", (*args, s.backup_kind)
    try:
        with closing(open_read_only(s.journal, s.timeout)) as conn:
            rows = conn.execute(query, args).fetchall()
    except sqlite3.DatabaseError as exc:
        raise JournalUnusable(f"cannot read backups from {s.journal}: {exc}") from None
    # Parsed in Python: ISO text with different offsets does not sort as text.
    times, bad = [], 0
    for (text,) in rows:
        try:
            times.append(parse_time(str(text)))
        except (ValueError, TypeError):
            bad += 1
    return _Newest(max(times, default=None), len(times), bad)


class BackupFreshnessProbe(BaseProbe[BackupFreshnessSettings]):
    kind: ClassVar[str] = "backup_freshness"

    async def run(self, started: float) -> Observation:
        try:
            newest = await asyncio.to_thread(newest_verified, self.settings)
        except JournalUnusable as exc:
            return self.error(f"{exc}.", started)
        return self._judge(newest, started)

    def _judge(self, newest: _Newest, started: float) -> Observation:
        s = self.settings
        what = f"{s.backup_kind} backup" if s.backup_kind else "backup"
        skipped = f" ({newest.unparsable} with an unreadable created_at skipped)" \
            if newest.unparsable else ""
        metrics = {"verified_backups": float(newest.verified)}
        if newest.created is None:
            return self.fail(f"no verified {what} of {s.target}{skipped}.", started,
                             Symptom.BACKUP_STALE, None, metrics)
        # A backup stamped in the future (clock step) is as fresh as one made now.
        age = max(0.0, (datetime.now(UTC) - newest.created).total_seconds())
        metrics["backup_age_seconds"] = age
        which = (f"the only verified {what}" if newest.verified == 1
                 else f"the newest of {newest.verified} verified {what}s")
        said = f"{which} of {s.target} is {_human(age)} old (limit {_human(s.max_age)}){skipped}"
        if age > s.max_age:
            return self.fail(f"{said}.", started, Symptom.BACKUP_STALE, None, metrics)
        return self.ok(f"{said}.", started, None, metrics)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"

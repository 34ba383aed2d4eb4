"""backup_freshness: the newest verified backup of a target, from the journal, is recent enough.

Inside the daemon the probe asks the daemon's own journal (SQLite or PostgreSQL) through a
`BackupSource` the daemon hands it; run on its own (`rollbackd probe`) it reads the SQLite
journal file named by `journal`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from pydantic import Field

from rollbackd.probes.base import AbsolutePath, BaseProbe, PositiveDuration, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom
from rollbackd.probes.sqlite_integrity import open_read_only


class BackupFreshnessSettings(ProbeSettings):
    kind: Literal["backup_freshness"] = "backup_freshness"
    journal: AbsolutePath | None = None
    """Absolute path of the daemon's SQLite journal (state_dir/journal.sqlite3), opened
    read-only when the probe runs outside the daemon; the daemon always asks its own journal."""
    target: str = Field(min_length=1)
    """The target whose backups count, as named in the journal's backups table."""
    backup_kind: str | None = None
    """Only backups of this kind (e.g. "sqlite", "fernet_key"); all kinds when unset."""
    max_age: PositiveDuration
    """The newest verified backup may be at most this old (from its created_at)."""


class JournalUnusable(Exception):
    """The journal cannot be read as one: the probe's problem, not evidence about backups."""


@dataclass(frozen=True)
class VerifiedBackups:
    """A target's verified backups, as far as freshness goes."""

    created: datetime | None
    """When the newest was created; None: there is none."""
    verified: int
    unparsable: int
    """Verified backups skipped because their creation time could not be read."""


class BackupSource(Protocol):
    """Where the probe learns about backups: the daemon's journal, whatever its backend."""

    async def verified_backups(self, target: str, kind: str | None) -> VerifiedBackups:
        """The verified backups of `target` (of `kind`; every kind when None). Raises
        JournalUnusable when the journal cannot be read."""
        ...


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp; one without an offset is taken as UTC, as the journal writes UTC."""
    at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def summarize(created: Iterable[object]) -> VerifiedBackups:
    """Verified backups from their created_at texts. Parsed here: ISO text with different
    offsets does not sort as text."""
    times, bad = [], 0
    for text in created:
        try:
            times.append(parse_time(str(text)))
        except (ValueError, TypeError):
            bad += 1
    return VerifiedBackups(max(times, default=None), len(times), bad)


class SqliteFileSource:
    """The backups table of a SQLite journal file, opened read-only for each check."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    async def verified_backups(self, target: str, kind: str | None) -> VerifiedBackups:
        return await asyncio.to_thread(self._read, target, kind)

    def _read(self, target: str, kind: str | None) -> VerifiedBackups:
        if not self.path.exists():
            raise JournalUnusable(f"journal file missing: {self.path}")
        query = ("SELECT created_at FROM backups WHERE target = ? AND verified_at IS NOT NULL "
                 "AND verified_at != ''")
        args: tuple[str, ...] = (target,)
        if kind is not None:
            query, args = query + " AND kind = ?", (*args, kind)
        try:
            with closing(open_read_only(self.path, self.timeout)) as conn:
                rows = conn.execute(query, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalUnusable(f"cannot read backups from {self.path}: {exc}") from None
        return summarize(text for (text,) in rows)


class BackupFreshnessProbe(BaseProbe[BackupFreshnessSettings]):
    kind: ClassVar[str] = "backup_freshness"

    def __init__(self, name: str, settings: BackupFreshnessSettings,
                 source: BackupSource | None = None) -> None:
        super().__init__(name, settings)
        if source is None and settings.journal is not None:
            source = SqliteFileSource(settings.journal, settings.timeout)
        self.source = source
        """None: run outside the daemon with no journal file named; every check says so."""

    async def run(self, started: float) -> Observation:
        if self.source is None:
            return self.error("no journal to read: outside the daemon, set `journal` to the "
                              "daemon's SQLite journal file.", started)
        try:
            newest = await self.source.verified_backups(self.settings.target,
                                                        self.settings.backup_kind)
        except JournalUnusable as exc:
            return self.error(f"{exc}.", started)
        return self._judge(newest, started)

    def _judge(self, newest: VerifiedBackups, started: float) -> Observation:
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

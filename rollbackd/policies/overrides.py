"""Operator overrides (pause, silence, maintenance) and weekly maintenance windows, with expiry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from rollbackd.policies.settings import DAYS, MaintenanceWindow


class OverrideKind(StrEnum):
    PAUSE = "pause"  # observe and record; act on nothing, send nothing new
    SILENCE = "silence"  # act as usual; send no mail
    MAINTENANCE = "maintenance"  # people are working on it: observe only


@dataclass(frozen=True)
class Override:
    kind: OverrideKind
    target: str | None
    """None: every target."""
    until: datetime
    reason: str
    by: str = ""

    def applies(self, target: str, now: datetime) -> bool:
        return now < self.until and self.target in (None, target)


def active(overrides: tuple[Override, ...], target: str, now: datetime,
           kind: OverrideKind) -> Override | None:
    """The override of this kind in force for the target, the one lasting longest."""
    found = [o for o in overrides if o.kind is kind and o.applies(target, now)]
    return max(found, key=lambda o: o.until, default=None)


def in_maintenance(windows: list[MaintenanceWindow], now: datetime) -> MaintenanceWindow | None:
    """The weekly window (UTC) that contains `now`, including one that began yesterday."""
    now = now.astimezone(UTC)  # windows are written in UTC, whatever zone `now` carries
    for w in windows:
        hh, mm = (int(x) for x in w.start.split(":"))
        for back in (0, 1, 2, 3, 4, 5, 6, 7):
            day = now - timedelta(days=back)
            if DAYS[day.weekday()] not in w.days:
                continue
            start = day.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if start <= now < start + timedelta(seconds=w.duration):
                return w
    return None

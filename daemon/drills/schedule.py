"""Drill schedules: cron syntax on APScheduler's CronTrigger, and when a drill is overdue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from daemon.drills.settings import DrillSettings

DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _days(field: str) -> str:
    """Cron's day-of-week (0 or 7 = Sunday) as names: APScheduler 3 counts from Monday = 0."""
    if field == "*" or not any(ch.isdigit() for ch in field):
        return field
    days: list[int] = []
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            a, b = span.split("-", 1)
            low, high = _day(a), _day(b)
        else:
            low = high = _day(span)
        if step < 1 or low > high:
            raise ValueError(f"bad day-of-week {part!r}")
        days += range(low, high + 1, step)
    return ",".join(DAYS[d % 7] for d in dict.fromkeys(days))


def _day(text: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    if text.lower()[:3] in DAYS:
        return DAYS.index(text.lower()[:3])
    raise ValueError(f"bad day-of-week {text!r}: 0-7 or sun-sat")


def parse_cron(expr: str, timezone: str) -> CronTrigger:
    """A CronTrigger from five cron fields; ValueError with the reason when they are bad."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got "
                         f"{len(fields)} in {expr!r}")
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_days(weekday), timezone=ZoneInfo(timezone))
    except ValueError as exc:
        raise ValueError(f"bad cron expression {expr!r}: {exc}") from None


def trigger(settings: DrillSettings) -> CronTrigger:
    return parse_cron(settings.schedule, settings.timezone)


def next_after(settings: DrillSettings, after: datetime) -> datetime | None:
    """The first scheduled time strictly after `after`."""
    return trigger(settings).get_next_fire_time(None, after + timedelta(microseconds=1))


def due_since(settings: DrillSettings, since: datetime, last_success: datetime | None
              ) -> datetime | None:
    """When the next drill is due: the first scheduled time after the last drill that passed
    (or after the schedule was first seen, when none has passed yet)."""
    ref = max(since, last_success) if last_success else since
    return next_after(settings, ref)


def is_overdue(settings: DrillSettings, since: datetime, last_success: datetime | None,
               now: datetime) -> bool:
    """A scheduled time passed more than `grace` ago and no drill has passed since it."""
    due = due_since(settings, since, last_success)
    return due is not None and now >= due + timedelta(seconds=settings.grace)


def attach_drills(scheduler: AsyncIOScheduler, target: str, settings: DrillSettings,
                  run: Callable[[str], Awaitable[Any]]) -> None:
    """The target's scheduled drill as an APScheduler job (replaced on reload)."""
    scheduler.add_job(
        run, trigger(settings), args=[target], id=f"{target}/drills", name=f"drills {target}",
        max_instances=1, coalesce=True, misfire_grace_time=int(settings.grace),
        replace_existing=True,
    )

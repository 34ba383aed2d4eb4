"""Cron syntax (five fields) as an APScheduler CronTrigger; checked when the config loads.

Its own module, below both the drills' settings (which check a schedule) and their schedule
(which runs it), so neither imports the other to parse one.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

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

"""Drill schedules: a target's cron trigger, when its next drill is due and when it is overdue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.triggers.cron import CronTrigger

from rollbackd.daemon.drills.cron import parse_cron

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from rollbackd.daemon.drills.settings import DrillSettings


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

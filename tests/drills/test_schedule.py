"""The drill schedule: cron syntax, the quarterly default, the overdue rule with a moved clock
(no sleeping for months), its metrics, and the APScheduler job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.drills.cron import parse_cron
from rollbackd.daemon.drills.record import DrillRun, ScenarioRun
from rollbackd.daemon.drills.schedule import attach_drills, due_since, is_overdue, next_after
from rollbackd.daemon.drills.service import DrillService
from rollbackd.daemon.drills.settings import QUARTERLY, DrillSettings
from rollbackd.daemon.metrics import Metrics


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


QUARTER = DrillSettings(injectors={"app_down": {"builtin": "sampleapp_wont_start"}})


def test_the_default_is_quarterly_at_three_on_the_first() -> None:
    assert QUARTER.schedule == QUARTERLY == "0 3 1 */3 *"
    assert next_after(QUARTER, at("2024-01-15T00:00")) == at("2024-04-01T03:00")
    assert next_after(QUARTER, at("2024-04-01T03:00")) == at("2024-07-01T03:00")  # strictly after
    assert next_after(QUARTER, at("2024-11-24T12:00")) == at("2025-01-01T03:00")


@pytest.mark.parametrize(("expr", "first"), [
    ("0 3 * * 0", "2024-01-07T03:00"),      # cron's 0 is Sunday (APScheduler's 0 is Monday)
    ("0 3 * * 7", "2024-01-07T03:00"),
    ("30 2 * * 1-5", "2024-01-02T02:30"),   # 2024-01-01 is a Monday: after midnight, Tuesday
    ("0 4 * * sat", "2024-01-06T04:00"),
    ("0 0 1 1 *", "2025-01-01T00:00"),
])
def test_cron_fields_mean_what_cron_means(expr: str, first: str) -> None:
    s = DrillSettings(schedule=expr)
    assert next_after(s, at("2024-01-01T12:00")) == at(first)


def test_a_schedule_in_another_time_zone() -> None:
    s = DrillSettings(schedule="0 3 1 */3 *", timezone="Europe/Berlin")
    assert next_after(s, at("2024-01-15T00:00")) == at("2024-04-01T01:00")  # 03:00 CEST


def test_overdue_once_a_scheduled_time_passed_beyond_the_grace_without_a_success() -> None:
    since = at("2024-01-15T10:00")  # when the daemon first saw the schedule
    assert due_since(QUARTER, since, None) == at("2024-04-01T03:00")
    assert not is_overdue(QUARTER, since, None, at("2024-03-31T23:00"))
    assert not is_overdue(QUARTER, since, None, at("2024-04-01T03:59"))  # within the 1 h grace
    assert is_overdue(QUARTER, since, None, at("2024-04-01T04:00"))
    # A drill passed on April 1st: due again July 1st.
    passed = at("2024-04-01T03:02")
    assert not is_overdue(QUARTER, since, passed, at("2024-06-30T12:00"))
    assert due_since(QUARTER, since, passed) == at("2024-07-01T03:00")
    assert is_overdue(QUARTER, since, passed, at("2024-08-15T00:00"))
    # A manual drill before the scheduled time does not excuse the scheduled one.
    assert is_overdue(QUARTER, since, at("2024-03-20T10:00"), at("2024-05-01T00:00"))


def _service(tmp_path: Path, clock: datetime) -> DrillService:
    config = parse_config(f"""
[daemon]
state_dir = "{tmp_path}"
metrics_address = ""
[targets.staging]
staging = true
[targets.staging.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
[targets.staging.drills.injectors]
app_down = {{ builtin = "sampleapp_wont_start" }}
[targets.prod.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
""")
    fake = SimpleNamespace(config=config, metrics=Metrics(), monitors={}, journal=None)
    return DrillService(fake, clock=lambda: clock)  # type: ignore[arg-type]


def _sample(service: DrillService, name: str) -> float | None:
    value = service.d.metrics.registry.get_sample_value(name, {"target": "staging"})
    return float(value) if value is not None else None


def test_the_overdue_gauge_follows_a_moved_clock_and_survives_restarts(tmp_path: Path) -> None:
    first = _service(tmp_path, at("2024-01-15T10:00"))  # the schedule is first seen here
    assert [s["target"] for s in first.status()] == ["staging"]  # prod is not staging
    assert _sample(first, "rollbackd_drill_overdue") == 0
    assert _sample(first, "rollbackd_drill_last_success_timestamp_seconds") is None
    assert _sample(first, "rollbackd_drill_next_due_timestamp_seconds") == \
        at("2024-04-01T03:00").timestamp()

    first.clock = lambda: at("2024-05-01T00:00")  # the April drill never ran
    assert _sample(first, "rollbackd_drill_overdue") == 1

    run = DrillRun(7, "staging", "schedule", [ScenarioRun("app_down", result="passed")])
    run.finish()
    run.finished_at = at("2024-05-02T09:00")
    first.store.finished(run)
    assert _sample(first, "rollbackd_drill_overdue") == 0
    assert _sample(first, "rollbackd_drill_last_success_timestamp_seconds") == \
        at("2024-05-02T09:00").timestamp()

    # A new daemon on the same state dir, three months on: overdue again, nothing forgotten.
    again = _service(tmp_path, at("2024-07-01T05:00"))
    assert _sample(again, "rollbackd_drill_overdue") == 1
    assert again.status()[0]["since"] == at("2024-01-15T10:00")
    assert again.store.next_id() == 1  # no report was written: ids start at 1 (or after them)


def test_a_failed_drill_does_not_count_as_a_success(tmp_path: Path) -> None:
    service = _service(tmp_path, at("2024-04-01T05:00"))
    run = DrillRun(1, "staging", "schedule", [ScenarioRun("app_down", result="failed")])
    run.finish()
    service.store.finished(run)
    assert run.state == "failed"
    assert _sample(service, "rollbackd_drill_last_success_timestamp_seconds") is None


def test_the_schedule_is_an_apscheduler_cron_job() -> None:
    scheduler = AsyncIOScheduler(timezone=UTC)

    async def run(target: str) -> None:
        pass

    attach_drills(scheduler, "staging", QUARTER, run)
    (job,) = scheduler.get_jobs()
    assert job.id == "staging/drills" and job.args == ("staging",)
    assert isinstance(job.trigger, CronTrigger)
    assert job.trigger.get_next_fire_time(None, at("2024-02-10T00:00")) == at("2024-04-01T03:00")
    assert job.max_instances == 1 and job.misfire_grace_time == 3600


def _config(extra: str) -> str:
    return f"""
[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
{extra}"""


@pytest.mark.parametrize(("extra", "error"), [
    ("[targets.web.drills]\n", "targets.web.drills: drills break their target on purpose: they "
     "need staging = true on the target"),
    ("[targets.web]\nstaging = true\n[targets.web.drills]\nschedule = \"0 3 1 */3\"\n",
     "targets.web.drills.schedule: expected 5 cron fields (minute hour day month weekday), "
     "got 4"),
    ("[targets.web]\nstaging = true\n[targets.web.drills]\nschedule = \"0 25 * * *\"\n",
     "higher than the maximum value (23)"),
    ("[targets.web]\nstaging = true\n[targets.web.drills]\ntimezone = \"Mars/Olympus\"\n",
     "targets.web.drills.timezone: unknown time zone"),
    ("[targets.web]\nstaging = true\n[targets.web.drills.injectors.app_down]\n"
     "argv = [\"/bin/true\"]\nbuiltin = \"sampleapp_wont_start\"\n",
     "give either argv (your own injector, no shell) or builtin"),
    ("[targets.web]\nstaging = true\n[targets.web.drills.injectors.key_invalid]\n"
     "builtin = \"sampleapp_slow\"\n", "builtin sampleapp_slow injects perf_degraded"),
    ("[targets.web]\nstaging = true\n[targets.web.drills]\nscenarios = [\"auth_broken\"]\n",
     "scenarios auth_broken have no injector"),
    ("[targets.web]\nstaging = true\n[targets.web.drills]\nscenarios = [\"meltdown\"]\n",
     "targets.web.drills.scenarios[0]: must be one of"),
])
def test_config_errors_name_the_key(extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_config(extra))
    assert error in str(exc.value), str(exc.value)


def test_parse_cron_rejects_what_cron_rejects() -> None:
    with pytest.raises(ValueError, match="expected 5 cron fields"):
        parse_cron("* * *", "UTC")
    with pytest.raises(ValueError, match="bad day-of-week"):
        parse_cron("0 3 * * 9", "UTC")
    assert parse_cron("*/15 * * * *", "UTC").get_next_fire_time(
        None, at("2024-01-01T00:01")) == at("2024-01-01T00:15")

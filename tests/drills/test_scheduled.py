"""The schedule's job in a real daemon: APScheduler runs the target's drill (moved to now, not
waited for), the drill passes, and the overdue gauge and the last success follow."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollbackd.daemon.app import Daemon
from rollbackd.daemon.config import parse_config
from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink
from tests.drills.conftest import ready_workspace, staging_config

pytestmark = pytest.mark.e2e


async def until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_the_scheduled_job_runs_the_planned_drill(workspace: Workspace, smtp: SmtpSink,
                                                        tmp_path: Path) -> None:
    ws = ready_workspace(workspace)
    text = staging_config(ws, smtp.port, 0, drills='scenarios = ["key_invalid"]\n')
    text = text.replace('metrics_address = "127.0.0.1:0"', 'metrics_address = ""')
    config = parse_config(text, "staging.toml", tmp_path)
    d = Daemon(config)
    serving = asyncio.create_task(d.serve(install_signals=False))
    try:
        await until(lambda: hasattr(d, "drills") and d.monitors, 20, "the daemon")
        job = d.scheduler.scheduler.get_job("grading/drills")
        assert job is not None and job.next_run_time > datetime.now(UTC)  # next quarter
        registry = d.metrics.registry
        assert registry.get_sample_value("rollbackd_drill_overdue", {"target": "grading"}) == 0
        good = ws.head()
        await until(lambda: any(e.version == good and e.known_good
                                for e in d.journal.ledger.entries("grading")), 30, "known-good")
        job.modify(next_run_time=datetime.now(UTC))  # the quarter is over: it is 03:00 on the 1st
        await until(lambda: any(r.done for r in d.drills.runs.values()), 60, "the drill")
        (run,) = d.drills.runs.values()
        assert run.trigger == "schedule" and [s.scenario for s in run.scenarios] == ["key_invalid"]
        assert run.state == "passed", run.to_dict()
        last = registry.get_sample_value("rollbackd_drill_last_success_timestamp_seconds",
                                         {"target": "grading"})
        assert last is not None and abs(last - time.time()) < 60
        assert d.scheduler.scheduler.get_job("grading/drills").next_run_time > datetime.now(UTC)
    finally:
        d.handle_exit(0)
        await serving

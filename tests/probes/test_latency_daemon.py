"""The latency baseline wired into a real daemon: a sustained slowdown opens perf_degraded."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from rollbackd.probes.observation import Status
from tests.conftest import DaemonProcess, wait_for
from tests.probes.servers import HttpServer, Reply

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, url: str) -> str:
    return f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
socket = "{tmp_path / 'ctl.sock'}"
metrics_address = ""

[targets.web.probes.health]
kind = "http_health"
url = "{url}/health"
interval = "50ms"
timeout = "2s"
failure_threshold = 1

[targets.web.probes.health.latency]
factor = 3
floor = "50ms"
window = "1s"
windows = 2
min_samples = 2
baseline_min = 10
"""


def incidents(d: DaemonProcess) -> list[dict[str, Any]]:
    with closing(d.db()) as db:
        return [dict(r) for r in db.execute(
            "SELECT incident_class, state, reason FROM incidents ORDER BY id")]


def test_sustained_slowdown_is_perf_degraded_and_recovers(
        tmp_path: Path, start_daemon: Callable[..., DaemonProcess]) -> None:
    with HttpServer() as srv:
        d = start_daemon(config(tmp_path, srv.url))
        # A baseline of fast answers first: nothing is judged before it exists.
        wait_for(lambda: len(srv.requests) >= 40, 20, "a baseline of fast answers")
        assert incidents(d) == []
        srv.reply(Reply(delay=0.5))  # ten times the floor: far over 2 x any baseline under load
        found = wait_for(lambda: incidents(d), 20, f"a perf_degraded incident\n{d.log_text()}")
        assert found[0]["incident_class"] == "perf_degraded", found
        assert "p95 latency" in found[0]["reason"] and "baseline p95" in found[0]["reason"]
        srv.reply(Reply())
        wait_for(lambda: incidents(d)[0]["state"] in ("transient", "resolved"), 20,
                 f"the incident to close once answers are fast again\n{d.log_text()}")


async def test_slow_answers_below_the_floor_are_never_degraded() -> None:
    """Real answers 150 times slower than the baseline, but under the floor: never degraded."""
    from rollbackd.policies.latency import LatencyState, track
    from rollbackd.probes.http_health import HttpHealthProbe, HttpHealthSettings

    with HttpServer() as srv:
        settings = HttpHealthSettings(url=srv.url + "/health", latency={
            "floor": "1s", "window": "100ms", "windows": 1, "min_samples": 1,
            "baseline_min": 2})
        assert settings.latency is not None
        probe, state = HttpHealthProbe("health", settings), LatencyState()
        for delay in (0.0, 0.0, 0.0, 0.0, 0.15, 0.15, 0.15):
            srv.reply(Reply(delay=delay))
            obs = await probe.check()
            assert (obs.status, obs.symptom) == (Status.OK, None)
            state = track(state, settings.latency, obs.at.timestamp(),
                          obs.metrics["latency_seconds"], True)
            assert not state.degraded

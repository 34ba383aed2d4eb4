"""The shipped Grafana dashboard against a real Prometheus scraping a real daemon that detected
an incident and rolled back: every panel's query returns a series. Also: the trigger label, and
no _created series."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.prometheus.conftest import PrometheusServer, wait_until
from tests.prometheus.test_e2e import daemon_config

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "rollbackd.json"


def panel_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def test_the_dashboard_has_a_query_per_panel() -> None:
    queries = panel_queries()
    assert len(queries) == len(json.loads(DASHBOARD.read_text())["panels"]) == 13
    assert any("trigger" in expr for _, expr in queries)


def test_every_panel_of_the_dashboard_returns_a_series(
    workspace: Workspace, smtp: SmtpSink, start_daemon: Callable[..., DaemonProcess],
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    ws = workspace
    ws.start()
    metrics = f"127.0.0.1:{free_port()}"
    prom = start_prometheus(scrape=(metrics,))
    d = start_daemon(daemon_config(ws, smtp, metrics, ""))
    v1 = ws.head()
    wait_for(lambda: known_good(d, v1), 30, "v1 known-good")
    ws.deploy_broken()  # app_down: detected, rolled back to v1 automatically, verified
    wait_for(lambda: [i for i in d.result("incidents") if i["state"] == "resolved"], 60,
             f"the rollback resolved\n{d.log_text()}")

    text = httpx.get(f"http://{metrics}/metrics", timeout=10, trust_env=False).text
    assert "_created" not in text
    rollbacks = [line for line in text.splitlines()
                 if line.startswith("rollbackd_rollbacks_total{")]
    assert len(rollbacks) == 1 and 'trigger="auto"' in rollbacks[0] and \
        'result="success"' in rollbacks[0], rollbacks
    incidents = [line for line in text.splitlines()
                 if line.startswith("rollbackd_incidents_total{")]
    assert incidents == ['rollbackd_incidents_total{incident_class="app_down",target="grading",'
                         'trigger="auto"} 1.0']

    for title, expr in panel_queries():
        wait_until(lambda expr=expr: prom.api("query", query=expr)["result"], 30,
                   f"a series for panel {title!r}: {expr}")

"""A real Prometheus scraping a real daemon process: the shipped alert fires, the probes query it,
and Alertmanager's webhook reaches the daemon process."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from rollbackd.daemon.demo.workspace import Workspace, free_port
from rollbackd.daemon.journal.store import Journal
from rollbackd.policies.breaker import Breaker, BreakerMode
from tests.conftest import DaemonProcess, SmtpSink
from tests.prometheus.alertmanager import LATENCY, alert, notification
from tests.prometheus.conftest import PrometheusServer, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "e2e-alertmanager-token-abcdefghij"


def open_breaker(ws: Workspace, target: str, plan: str) -> None:
    """Two failed rollbacks opened the breaker before this start; the journal keeps it."""
    now = datetime.now(UTC)
    journal = Journal(ws.root / "state" / "journal.sqlite3")
    journal.breakers.save(target, plan, Breaker(BreakerMode.OPEN, (now, now), now))
    journal.close()


def daemon_config(ws: Workspace, smtp: SmtpSink, metrics: str, targets: str) -> str:
    text = ws.config_toml(smtp.port, targets_extra=targets)
    return text.replace('metrics_address = ""', f'metrics_address = "{metrics}"')


def probe_state(d: DaemonProcess, target: str, probe: str) -> str:
    found = [t for t in d.result("status")["targets"] if t["target"] == target]
    return str(found[0]["probes"][probe]) if found else "missing"


def firing(prom: PrometheusServer, name: str) -> list[dict]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == name
            and a["state"] == "firing"]


def test_open_breaker_fires_the_shipped_alert(
    workspace: Workspace, smtp: SmtpSink, start_daemon: Callable[..., DaemonProcess],
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    ws = workspace
    ws.start()
    open_breaker(ws, "grading", "deployment_rollback")
    metrics = f"127.0.0.1:{free_port()}"
    prom = start_prometheus(scrape=(metrics,))
    # The daemon watches a second target through Prometheus: its probe asks for the very series
    # Prometheus scrapes from this daemon.
    d = start_daemon(daemon_config(ws, smtp, metrics, f"""
[targets.observer.probes.breakers]
kind = "prometheus_query"
url = "{prom.url}"
query = 'max(rollbackd_breaker_state{{target="grading"}})'
threshold = 1
interval = "1s"
timeout = "2s"
failure_threshold = 2
"""))

    found = wait_until(lambda: firing(prom, "RollbackdBreakerOpen"), 30,
                       f"RollbackdBreakerOpen firing\n{prom.log_text()}")
    assert found[0]["labels"] == {
        "alertname": "RollbackdBreakerOpen", "severity": "critical", "job": "rollbackd",
        "instance": metrics, "target": "grading", "plan": "deployment_rollback"}
    assert "rollbackctl breaker reset grading deployment_rollback" in \
        found[0]["annotations"]["description"]
    assert [r["value"][1] for r in prom.api("query", query="up")["result"]] == ["1"]

    # The prometheus_query probe got the 2 back and counts as failing, seen by the daemon itself
    # and, one scrape later, by Prometheus.
    wait_until(lambda: probe_state(d, "observer", "breakers") == "failing", 20,
               f"observer/breakers failing\n{d.log_text()}")
    wait_until(lambda: prom.api("query", query='rollbackd_probe_failing{target="observer"}')
               ["result"][0]["value"][1] == "1", 20, "Prometheus sees the failing probe")
    # No other shipped alert fires for a healthy daemon with one open breaker.
    others = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
    assert others == {"RollbackdBreakerOpen"}


def test_alertmanager_webhook_reaches_the_daemon_process(
    workspace: Workspace, smtp: SmtpSink, start_daemon: Callable[..., DaemonProcess],
) -> None:
    ws = workspace
    ws.start()
    port = free_port()
    (ws.root / "alert-token").write_text(TOKEN + "\n")
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=f"""
[targets.grading.probes.latency]
kind = "alertmanager"
match = {{alertname = "GradingHighLatency", service = "grading"}}
symptom = "slow"
interval = "1s"

[alerts]
listen = "127.0.0.1:{port}"
token_file = "{ws.root / 'alert-token'}"
"""))
    url = f"http://127.0.0.1:{port}/webhook"

    def post(body: dict, token: str = TOKEN) -> httpx.Response:
        return httpx.post(url, content=json.dumps(body), trust_env=False, timeout=10,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"})

    def state() -> str:
        return probe_state(d, "grading", "latency")

    wait_until(lambda: state() == "passing", 20, "latency probe passing")
    assert post(notification(alert(LATENCY)), token="guess-guess-guess-guess").status_code == 401
    assert state() == "passing"
    r = post(notification(alert(LATENCY, summary="p95 above 500 ms")))
    assert (r.status_code, r.json()["mapped"]) == (200, 1)
    assert state() == "failing"  # the answer came after the probe ran
    assert post(notification(alert(LATENCY, status="resolved"))).status_code == 200
    assert state() == "passing"
    assert "alert='GradingHighLatency'" in d.log_text() and TOKEN not in d.log_text()

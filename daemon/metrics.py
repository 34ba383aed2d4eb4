"""Prometheus metrics: one registry passed in, names rollbackd_<subsystem>_<name>_<unit>."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Web latencies: most answers within a few hundred ms; timeouts land in the top buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.probe_success = Gauge(
            "rollbackd_probe_success", "1 if the last run of the probe passed",
            ["target", "probe"], registry=r)
        self.probe_duration = Histogram(
            "rollbackd_probe_duration_seconds", "Duration of probe runs",
            ["target", "probe"], buckets=LATENCY_BUCKETS, registry=r)
        self.probe_runs = Counter(
            "rollbackd_probe_runs_total", "Probe runs by result",
            ["target", "probe", "result"], registry=r)
        self.incidents = Counter(
            "rollbackd_incidents_total", "Incidents opened", ["target", "incident_class"],
            registry=r)
        self.rollbacks = Counter(
            "rollbackd_rollbacks_total", "Rollbacks by outcome",
            ["target", "incident_class", "backend", "result"], registry=r)
        self.scheduler_lag = Histogram(
            "rollbackd_scheduler_lag_seconds", "Probe start minus its due time",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5), registry=r)


class JournalCollector(Collector):
    """Gauges read from the journal at scrape time; a failing read never fails the scrape."""

    def __init__(self, open_incidents: object, outbox: object) -> None:
        self._open = open_incidents
        self._outbox = outbox

    def collect(self):  # type: ignore[no-untyped-def]
        open_g = GaugeMetricFamily("rollbackd_incidents_open", "Open incidents",
                                   labels=["target", "incident_class"])
        mail_g = GaugeMetricFamily("rollbackd_escalation_mails", "Outbox mails by state",
                                   labels=["state"])
        try:
            for (target, cls), n in self._open().items():  # type: ignore[operator]
                open_g.add_metric([target, cls], n)
            for state, n in self._outbox().items():  # type: ignore[operator]
                mail_g.add_metric([state], n)
        except Exception:  # noqa: BLE001 - a scrape must never raise
            pass
        yield open_g
        yield mail_g

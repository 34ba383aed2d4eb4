"""The live instruments, observed where things happen: probe runs, incidents, rollbacks, alerts."""

from __future__ import annotations

import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.clock import offset as clock_offset

Trigger = Literal["auto", "manual", "drill"]
"""What started an incident or a rollback: the daemon itself, a person
(`rollbackctl rollback`), or a recovery drill. Dashboards count production incidents apart."""

# Web latencies: most answers within a few hundred ms; timeouts land in the top buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Detection and recovery take seconds (a dead app) to hours (a person approving a restore).
INCIDENT_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# Up to a minute: the lag alert needs buckets above its 5 s threshold to see it crossed.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 5, 10, 30, 60)


def _version() -> str:
    try:
        return version("rollbackd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class Metrics:
    """Every live instrument on one explicit registry; a test passes a fresh one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The _created series of every counter and histogram double the series count and nobody
        # graphs them (a process-wide switch; the daemon has one Metrics).
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("rollbackd_build", "The running rollbackd", registry=r).info({"version": _version()})
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
            "rollbackd_incidents_total", "Incidents opened, by what started them",
            ["target", "incident_class", "trigger"], registry=r)
        self.rollbacks = Counter(
            "rollbackd_rollbacks_total", "Rollbacks by outcome and by what started them",
            ["target", "incident_class", "backend", "result", "trigger"], registry=r)
        self.time_to_detect = Histogram(
            "rollbackd_time_to_detect_seconds", "From the first failed probe run to the incident",
            ["target", "incident_class"], buckets=INCIDENT_BUCKETS, registry=r)
        self.time_to_recover = Histogram(
            "rollbackd_time_to_recover_seconds",
            "From the first failed probe run to every probe passing again",
            ["target", "incident_class"], buckets=INCIDENT_BUCKETS, registry=r)
        self.scheduler_lag = Histogram(
            "rollbackd_scheduler_lag_seconds", "Probe start minus its due time",
            buckets=LAG_BUCKETS, registry=r)
        self.scheduler_last_run = Gauge(
            "rollbackd_scheduler_last_run_timestamp_seconds",
            "When the scheduler last started a probe; stands still when the loop stalls",
            registry=r)
        self.clock_offset = Gauge(
            "rollbackd_clock_offset_seconds",
            "How far the system clock is from rollbackd's own, which never steps (0: in step)",
            registry=r)
        self.clock_offset.set_function(clock_offset)
        self.webhook_requests = Counter(
            "rollbackd_webhook_requests_total", "Alertmanager webhook requests by HTTP status",
            ["code"], registry=r)
        self.webhook_alerts = Counter(
            "rollbackd_webhook_alerts_total", "Alerts mapped to a target's alertmanager probe",
            ["target", "probe", "status"], registry=r)
        self.restore_tests = Counter(
            "rollbackd_backup_restore_tests_total",
            "Scheduled test restores of backups by result: passed, failed (the backup is marked "
            "unusable) or error (the test could not be run, e.g. the server was down)",
            ["target", "result"], registry=r)
        self.backups_failed = Counter(
            "rollbackd_backups_failed_total",
            "Scheduled backups that failed (no copy taken: directory full, source unreadable)",
            ["target", "kind"], registry=r)
        self.webhook_unmatched = Counter(
            "rollbackd_webhook_alerts_unmatched_total", "Alerts no alertmanager probe matched",
            registry=r)

    def incident_opened(self, target: str, incident_class: str,
                        trigger: Trigger = "auto") -> None:
        self.incidents.labels(target, incident_class, trigger).inc()

    def rollback_finished(self, target: str, incident_class: str, backend: str, result: str,
                          trigger: Trigger = "auto") -> None:
        self.rollbacks.labels(target, incident_class, backend, result, trigger).inc()

    def detected(self, target: str, incident_class: str, onset: datetime | None) -> None:
        if onset is not None:
            seconds = (now_utc() - onset).total_seconds()
            self.time_to_detect.labels(target, incident_class).observe(max(0.0, seconds))

    def recovered(self, target: str, incident_class: str, since: datetime | None) -> None:
        if since is not None:
            seconds = (now_utc() - since).total_seconds()
            self.time_to_recover.labels(target, incident_class).observe(max(0.0, seconds))

    def scheduler_ran(self, lag: float) -> None:
        self.scheduler_lag.observe(lag)
        self.scheduler_last_run.set(time.time())

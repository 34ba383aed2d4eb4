"""Drill metrics: each scenario's timings as observed, and per staging target whether its drills
are current: the last drill that passed (RollbackdDrillOverdue), overdue, and the next due time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("rollbackd.metrics")

# From a dead app noticed in a second to a restore approved by a person within the timeout.
DRILL_BUCKETS = (0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)
PHASES = ("detected", "rollback_started", "rolled_back", "verified")


class DrillMetrics:
    """The live drill instruments on the daemon's registry, plus the schedule collector."""

    def __init__(self, registry: CollectorRegistry,
                 status: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.phase_seconds = Histogram(
            "rollbackd_drill_phase_seconds",
            "Seconds from a drill's injected fault to each phase of the recovery "
            "(detected, rollback_started, rolled_back, verified)",
            ["target", "scenario", "phase"], buckets=DRILL_BUCKETS, registry=registry)
        self.scenarios = Counter(
            "rollbackd_drill_scenarios_total", "Drill scenarios run, by result",
            ["target", "scenario", "result"], registry=registry)
        registry.register(DrillCollector(status))

    def observe(self, target: str, scenario: str, timings: Mapping[str, float],
                result: str) -> None:
        self.scenarios.labels(target, scenario, result).inc()
        if result != "passed":
            return  # a failed drill's phases are not recovery times
        for phase in PHASES:
            if phase in timings:
                self.phase_seconds.labels(target, scenario, phase).observe(timings[phase])


def _ts(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class DrillCollector(Collector):
    """Read at scrape time from the drill store (which survives restarts); never raises."""

    def __init__(self, status: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        last = GaugeMetricFamily(
            "rollbackd_drill_last_success_timestamp_seconds",
            "When the last drill of the target that passed finished", labels=["target"])
        overdue = GaugeMetricFamily(
            "rollbackd_drill_overdue",
            "1 when a scheduled drill time passed (beyond drills.grace) and no drill passed since",
            labels=["target"])
        due = GaugeMetricFamily(
            "rollbackd_drill_next_due_timestamp_seconds",
            "The scheduled time by which the next drill of the target must pass",
            labels=["target"])
        try:
            for s in self.status():
                target = str(s["target"])
                if (at := _ts(s.get("last_success"))) is not None:
                    last.add_metric([target], at)
                overdue.add_metric([target], 1.0 if s.get("overdue") else 0.0)
                if (at := _ts(s.get("next_due"))) is not None:
                    due.add_metric([target], at)
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.debug("metrics section=drills status=failed reason=%s", exc)
        yield last
        yield overdue
        yield due

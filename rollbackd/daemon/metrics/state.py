"""Metrics read from the monitors' in-memory state at scrape time: probe health and intervals."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rollbackd.policies.debounce import ProbeHealth
from rollbackd.probes.base import ProbeSettings

log = logging.getLogger("rollbackd.metrics")


class Watched(Protocol):
    """What the collector needs of a target's monitor."""

    @property
    def health(self) -> Mapping[str, ProbeHealth]: ...

    @property
    def settings(self) -> Mapping[str, ProbeSettings]: ...


class MonitorCollector(Collector):
    """Failing probes and their symptoms per target, as the decision tree sees them right now."""

    def __init__(self, monitors: Callable[[], Mapping[str, Watched]]) -> None:
        self.monitors = monitors

    def collect(self) -> Iterator[Metric]:
        failing = GaugeMetricFamily(
            "rollbackd_probe_failing",
            "1 while the probe counts as failing after its failure threshold (debounced)",
            labels=["target", "probe"])
        interval = GaugeMetricFamily(
            "rollbackd_probe_interval_seconds", "Configured seconds between two runs of the probe",
            labels=["target", "probe"])
        symptoms = GaugeMetricFamily(
            "rollbackd_symptoms", "The target's failing probes by symptom",
            labels=["target", "symptom"])
        try:
            # Copies: the event loop's thread may replace entries while this thread reads them.
            for target, monitor in list(self.monitors().items()):
                counts: dict[str, int] = {}
                for probe, settings in list(monitor.settings.items()):
                    interval.add_metric([target, probe], settings.interval)
                for probe, h in list(monitor.health.items()):
                    failing.add_metric([target, probe], 1 if h.failing else 0)
                    if h.failing and h.symptom is not None:
                        counts[h.symptom.value] = counts.get(h.symptom.value, 0) + 1
                for symptom, n in sorted(counts.items()):
                    symptoms.add_metric([target, symptom], n)
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.debug("metrics section=monitors status=failed reason=%s", exc)
        yield failing
        yield interval
        yield symptoms

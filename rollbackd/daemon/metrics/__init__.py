"""Prometheus metrics: one registry passed in, names rollbackd_<subsystem>_<name>_<unit>."""

from __future__ import annotations

from rollbackd.daemon.metrics.instruments import LATENCY_BUCKETS, Metrics
from rollbackd.daemon.metrics.journal import JournalCollector
from rollbackd.daemon.metrics.state import MonitorCollector

__all__ = ["LATENCY_BUCKETS", "JournalCollector", "Metrics", "MonitorCollector"]

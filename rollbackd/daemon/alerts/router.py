"""Alerts to probes: each alert goes to every alertmanager probe whose matchers it satisfies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rollbackd.daemon.alerts.payload import Notification, now_utc
from rollbackd.daemon.metrics import Metrics
from rollbackd.probes.alertmanager import AlertmanagerProbe, AlertSignal

if TYPE_CHECKING:
    from rollbackd.daemon.monitor import TargetMonitor

log = logging.getLogger("rollbackd.alerts")

RUN_WAIT = 5.0
"""Seconds a webhook request waits for the probe runs it caused before it answers anyway."""
KEEP_FIRING = 24 * 3600.0
"""A firing alert never resolved is kept this long for replay; probes forget theirs sooner."""


@dataclass(frozen=True)
class Delivery:
    mapped: int
    unmatched: int


@dataclass
class AlertRouter:
    monitors: Callable[[], Mapping[str, TargetMonitor]]
    """The daemon's current monitors, looked up per request: a reload replaces them."""
    metrics: Metrics
    firing: dict[str, tuple[AlertSignal, float]] = field(default_factory=dict)
    """Firing alerts that matched a probe, by fingerprint, with the monotonic time they were
    reported: probes rebuilt by a reload get them back."""
    _runs: set[asyncio.Task[None]] = field(default_factory=set)

    def _route(self, alert: AlertSignal, seen: float) -> list[tuple[TargetMonitor, str]]:
        hits = []
        for monitor in self.monitors().values():
            for name, probe in monitor.probes.items():
                if isinstance(probe, AlertmanagerProbe) and probe.matches(alert.labels):
                    probe.receive(alert, seen)
                    hits.append((monitor, name))
        return hits

    async def deliver(self, note: Notification) -> Delivery:
        now = now_utc()
        touched: dict[tuple[str, str], TargetMonitor] = {}
        unmatched = 0
        seen = time.monotonic()
        self._prune(seen)
        for alert in note.alerts:
            signal = alert.signal(now)
            hits = self._route(signal, seen)
            self.firing.pop(signal.fingerprint, None)
            if signal.firing and hits:
                self.firing[signal.fingerprint] = (signal, seen)
            if not hits:
                unmatched += 1
                self.metrics.webhook_unmatched.inc()
            status = "firing" if signal.firing else "resolved"
            for monitor, probe in hits:
                touched[(monitor.name, probe)] = monitor
                self.metrics.webhook_alerts.labels(monitor.name, probe, status).inc()
            log.info("alert=%r fingerprint=%r status=%s routed_to=%s", signal.name,
                     signal.fingerprint, status, ",".join(f"{m.name}/{p}" for m, p in hits)
                     or "nothing")
        # Run each touched probe now, as a scheduled run would: the verdict need not wait for
        # the probe's next interval.
        runs = [self._run(monitor, probe) for (_, probe), monitor in touched.items()]
        if runs:
            await asyncio.wait(runs, timeout=RUN_WAIT)
        return Delivery(len(note.alerts) - unmatched, unmatched)

    def _run(self, monitor: TargetMonitor, probe: str) -> asyncio.Task[None]:
        task = asyncio.create_task(monitor.run_scheduled(probe), name=f"alert-{monitor.name}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    def replay(self) -> None:
        """Hand every firing alert to the current probes (after a reload rebuilt them)."""
        self._prune(time.monotonic())
        for signal, seen in self.firing.values():
            self._route(signal, seen)

    def _prune(self, now: float) -> None:
        self.firing = {fp: (s, seen) for fp, (s, seen) in self.firing.items()
                       if seen >= now - KEEP_FIRING}

    async def close(self) -> None:
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

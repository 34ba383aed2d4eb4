"""The daemon's lifecycle: run -> serve -> startup / main_loop / shutdown; signals only set flags."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from rollbackd.daemon.alerts.service import AlertReceiver, start_alerts
from rollbackd.daemon.backup.store import sweep_leftovers
from rollbackd.daemon.clock import CLOCK
from rollbackd.daemon.cluster import Cluster
from rollbackd.daemon.config import Config, ConfigError, load_config
from rollbackd.daemon.control.commands import audit_refused, dispatch
from rollbackd.daemon.control.server import ControlServer
from rollbackd.daemon.drills.service import DrillService
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.escalation.tiers import TierChecker
from rollbackd.daemon.incidents.recovery import recover_interrupted
from rollbackd.daemon.journal.backend import journal_collector, open_journal
from rollbackd.daemon.metrics import Metrics, MonitorCollector
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.notify import Notifier, watchdog_interval
from rollbackd.daemon.reload_diff import Unapplied, as_applied, unapplied
from rollbackd.daemon.report import keep_reports
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.daemon.selfcheck import SelfCheck, raise_fd_limit
from rollbackd.daemon.statelock import StateLock

log = logging.getLogger("rollbackd")

GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic collector's thresholds once started (Python's are 700, 10, 10). Each probe run
makes hundreds of objects that live for its few milliseconds; at 700 allocations a young
collection came every few runs and moved whatever was in flight to the older generations, whose
growth then set off a full collection about once a second: at 5,000 probes every 5 s the
collector took 30% of the daemon's CPU, in pauses of up to 600 ms (bench/peer.py's GC columns).
At 10,000 most of a run's objects are gone by the time a young collection comes."""

SHUTDOWN_GRACE = 20.0
"""Seconds a running rollback step gets to finish on SIGTERM before it is journaled interrupted."""


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self.started_at = time.time()
        self.monitors: dict[str, TargetMonitor] = {}
        self.notifier = Notifier()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_server: Any = None
        self.alerts: AlertReceiver | None = None
        self._retired: list[TargetMonitor] = []
        """Monitors replaced by a reload while their rollback still runs; shutdown waits for them."""
        self.cluster: Cluster | None = None
        """With the PostgreSQL journal: which targets this instance owns (acts for)."""

    # -- signals: record, never act (the main loop acts) ---------------------------------------

    def handle_exit(self, sig: int) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting for the running step
        self.should_exit = True
        self._wake.set()

    def handle_reload(self) -> None:
        self.reload_requested = True
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        asyncio.run(self.serve())
        return 0

    async def serve(self, install_signals: bool = True) -> None:
        if install_signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.handle_exit, signal.SIGTERM)
            loop.add_signal_handler(signal.SIGINT, self.handle_exit, signal.SIGINT)
            loop.add_signal_handler(signal.SIGHUP, self.handle_reload)
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        cfg = self.config
        cfg.daemon.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # First of all: a second daemon on this state directory must touch nothing (socket,
        # journal, probes). StateDirInUse propagates; `rollbackd run` exits 1 with its message.
        self.state_lock = StateLock.acquire(cfg.daemon.state_dir)
        # Locked, and no backup started yet: every .partial there is what a crash left.
        sweep_leftovers(cfg.daemon.state_dir / "backups")
        # Durations that decide must not follow a step of the system clock: within this boot,
        # take up where the previous run's clock was (rollbackd/daemon/clock.py).
        log.info("clock status=%s offset=%+.1fs", CLOCK.continue_from(cfg.daemon.state_dir),
                 CLOCK.offset())
        raise_fd_limit()  # systemd's default soft limit of 1,024 is easily used up
        self.journal = open_journal(cfg)
        self.cluster = Cluster.for_config(self, self.journal, cfg)
        self.outbox = self.cluster.outbox(cfg) if self.cluster else Outbox(self.journal, cfg)
        # The daemon's own faults (descriptors, memory, disk, spawn, loop lag) are not the
        # targets': while self_degraded, observations do not count and nothing is evaluated.
        self.selfcheck = SelfCheck(cfg.daemon.state_dir, self.metrics.registry,
                                   lambda notice: self.outbox.send(notice))
        self.scheduler = ProbeScheduler(self.metrics)
        self.drills = DrillService(self)  # before the monitors: it schedules their drills
        self.scheduler.drills = self.drills.scheduled
        self.metrics.registry.register(journal_collector(cfg, lambda: {
            t: self.config.policy_for(t) for t in self.config.targets}))
        self.metrics.registry.register(MonitorCollector(lambda: self.monitors))
        self._build_monitors()
        if self.cluster is None:  # several instances: each target once this one owns it
            await self.recover_interrupted()  # asks the monitors' executors; before any probe
        self.scheduler.start()
        self.control = ControlServer(cfg.daemon.socket, self._control, cfg.daemon.allowed_uids,
                                     cfg.daemon.socket_group, cfg.daemon.allowed_groups,
                                     cfg.daemon.max_control_connections,
                                     on_forbidden=partial(audit_refused, self))
        await self.control.start()
        self._start_metrics()
        self.alerts = await start_alerts(cfg.alerts, self.acting_monitors, self.metrics)
        self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
        self._tasks.append(asyncio.create_task(self.selfcheck.run(), name="selfcheck"))
        # Unacknowledged escalations page the next tier; cancelled with the other tasks.
        tiers = TierChecker(self.cluster.ladders() if self.cluster else self.journal.escalations,
                            self.outbox)
        self._tasks.append(asyncio.create_task(tiers.run(), name="escalation-tiers"))
        # Every incident gets its report, also those that only escalated or recovered alone.
        self._tasks.append(asyncio.create_task(keep_reports(self.journal, self.reports_dir),
                                               name="reports"))
        interval = watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self.notifier.watchdog(interval),
                                                   name="watchdog"))
        # Start-up objects live as long as the daemon: keep the collector from walking them
        # again and again (gen-2 pauses of 100-200 ms were measured with 600 probes).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if self.cluster is not None:
            self.cluster.start()
        self.notifier.ready(self.summary())
        log.info("daemon status=ready targets=%d socket=%s", len(self.monitors),
                 cfg.daemon.socket)

    async def main_loop(self) -> None:
        while not self.should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            self._wake.clear()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self.notifier.status(self.summary())

    async def shutdown(self) -> None:
        log.info("daemon status=stopping")
        self.notifier.stopping()
        self.scheduler.shutdown()
        await self.drills.stop()  # a drill cut off is reported as interrupted
        if self.cluster is not None:  # keep the targets owned while rollbacks wind down
            self.cluster.quiesce()
        if self.alerts is not None:  # no alert may start a rollback while we wind down
            await self.alerts.stop()
        monitors = [*self.monitors.values(), *self._retired]
        running = [t for m in monitors if (t := m.desk.task) is not None and not t.done()]
        if running:
            log.info("daemon status=stopping waiting_for=%d rollback(s) grace=%.0fs",
                     len(running), SHUTDOWN_GRACE)
            deadline = time.monotonic() + SHUTDOWN_GRACE
            while running and not self.force_exit and time.monotonic() < deadline:
                await asyncio.wait(running, timeout=0.2)
                running = [t for t in running if not t.done()]
            for task in running:  # the runner journals the cut-off step as interrupted
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.stop()
        await self.control.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.outbox.flush(), 5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.journal.close()
        self.state_lock.release()
        log.info("daemon status=stopped")

    # -- parts -------------------------------------------------------------------------------

    @property
    def reports_dir(self) -> Path:
        return self.config.daemon.state_dir / "reports"

    def _fault_hook(self) -> Any:
        # Test settings only: die as kill -9 would, right after the step is journaled running
        # (AT), or right after it did its work and before it is journaled done (AFTER), or right
        # after it is journaled done and before the next step starts (BETWEEN), or right after
        # the incident's end (resolved, held, failed) is written, before it commits with its
        # mail (CLOSE).
        crash = {"running": os.environ.get("ROLLBACKD_CRASH_AT_STEP"),
                 "effect": os.environ.get("ROLLBACKD_CRASH_AFTER_STEP"),
                 "done": os.environ.get("ROLLBACKD_CRASH_BETWEEN_STEPS"),
                 "close": os.environ.get("ROLLBACKD_CRASH_AT_CLOSE")}
        if not (self.config.daemon.test_hooks and any(crash.values())):
            return None

        def hook(step: str, point: str) -> None:
            if step == crash.get(point):
                os.kill(os.getpid(), signal.SIGKILL)

        return hook

    async def recover_interrupted(self, target: str | None = None) -> None:
        """Steps a crash left running: each checked against the world by its executor; found
        done -> the plan goes on (or waits for a person), else its incident is held."""
        desks = {name: m.desk for name, m in self.monitors.items()}
        await recover_interrupted(self.journal, self.outbox, self.reports_dir, desks, target)

    def acting_monitors(self) -> dict[str, TargetMonitor]:
        """The monitors this instance acts for: all, or with several instances its own."""
        if self.cluster is None:
            return self.monitors
        return {n: m for n, m in self.monitors.items() if self.cluster.may_act(n)}

    def new_monitor(self, name: str) -> TargetMonitor:
        return TargetMonitor(name, self.config.targets[name], self.config.policy_for(name),
                             self.journal, self.outbox, self.metrics, self.reports_dir,
                             self._fault_hook(), own_fault=self.selfcheck.judge)

    def _build_monitors(self) -> None:
        self.monitors = {name: self.new_monitor(name) for name in self.config.targets}
        if self.cluster is not None:  # it schedules the targets this instance owns
            self.cluster.adopt()
            return
        for monitor in self.monitors.values():
            self.scheduler.schedule(monitor)

    def _start_metrics(self) -> None:
        addr = self.config.daemon.metrics_address
        if not addr:
            return
        host, _, port = addr.rpartition(":")
        try:
            self._metrics_server, _ = start_http_server(int(port), host.strip("[]"),
                                                        registry=self.metrics.registry)
        except OSError as exc:  # metrics are not worth failing the daemon for
            log.error("metrics status=disabled address=%s reason=%s", addr, exc.strerror)

    def reload(self) -> list[Unapplied] | None:
        """Applies the config file again: None if it is rejected, else the keys left for a restart."""
        if self.config_path is None:
            return None
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload status=rejected file=%s error=%r", exc.path, line)
            log.error("reload status=rejected keeping=previous config")
            self.notifier.ready(self.summary())
            return None
        waiting = unapplied(self.config, new)
        for item in waiting:
            log.warning("reload key=%s status=needs-restart old=%s new=%s", item.key, item.old,
                        item.new)
        new = as_applied(self.config, new)
        # Running rollbacks keep their monitor objects; the journal keeps one incident per target.
        self.scheduler.unschedule_all()
        for name in set(self.monitors) - set(new.targets):
            closed = self.monitors[name].desk.close_removed("its target was removed from the "
                                                            "config")
            if closed:
                log.info("reload target=%s removed incident=%d status=abandoned", name, closed)
        self._retired = [m for m in (*self._retired, *self.monitors.values()) if m.busy]
        self.config = new
        self.outbox.config = new  # new contacts, routes and SMTP settings for queued mail too
        self._build_monitors()
        if self.alerts is not None:
            self.alerts.replay()
        log.info("reload status=done targets=%d", len(self.monitors))
        self.notifier.ready(self.summary())
        return waiting

    def summary(self) -> str:
        failing = sum(1 for m in self.monitors.values() if any(h.failing for h in m.health.values()))
        busy = sum(1 for m in self.monitors.values() if m.busy)
        return f"{len(self.monitors)} targets, {failing} failing, {busy} rolling back"

    async def _control(self, cmd: str, args: dict[str, Any], peer: Any) -> Any:
        if self.cluster is not None:  # acting for a target is for its owner only
            self.cluster.check_command(cmd, args, peer)
        return await dispatch(self, cmd, args, peer)

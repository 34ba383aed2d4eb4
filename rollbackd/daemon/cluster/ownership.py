"""Per-target ownership among instances sharing a PostgreSQL journal: one acts, the others wait.

An instance owns a target while its lock session holds the target's advisory lock. It acts for
the target (probes, decisions, rollbacks, backups) only while `may_act(target)`: the lease is
active and the last renewal of the session succeeded less than `fence_after` ago. When the
session fails or goes quiet for that long, every target's work is cancelled at once (`fence`)
and the runner journals nothing more; a new owner waits out the old one's `fence_after` before
it starts. A target is taken over by recovering it from the journal exactly as at a start-up:
a step left `running` is interrupted and its incident held for a person.

Spread: with N live instances (their instance locks) and T targets, each takes at most
ceil(T/N), trying targets in an order rotated by its name, and hands back an idle target
(one per round) while it holds more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol

from rollbackd.daemon.cluster.session import LockSession
from rollbackd.daemon.cluster.timing import Timing
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.scheduler import ProbeScheduler

log = logging.getLogger("rollbackd.cluster")


class Host(Protocol):
    """What ownership needs from the daemon."""

    monitors: dict[str, TargetMonitor]
    """One per configured target, owned or not."""
    scheduler: ProbeScheduler

    def new_monitor(self, name: str) -> TargetMonitor: ...

    async def recover_interrupted(self, target: str | None = None) -> None: ...


@dataclass
class Lease:
    target: str
    lease_id: int
    epoch: int
    ready_at: float
    """time.monotonic() from which the previous owner has certainly stopped."""
    state: Literal["pending", "active"] = "pending"
    jobs: list[str] = field(default_factory=list)
    running: set[asyncio.Task[Any]] = field(default_factory=set)
    monitors: list[TargetMonitor] = field(default_factory=list)
    """Every monitor that acted under this lease (a reload replaces them; a busy one lives on)."""
    first_probe: datetime | None = None
    first_probe_saved: bool = False


class Ownership:
    def __init__(self, host: Host, dsn: str, instance: str, timing: Timing) -> None:
        self.host = host
        self.dsn = dsn
        self.instance = instance
        self.timing = timing
        self.session: LockSession | None = None
        self.leases: dict[str, Lease] = {}
        self.last_ok = 0.0
        """time.monotonic() when the last successful renewal was sent."""
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._ids: dict[str, int] = {}
        self._next_round = 0.0
        self._stopping = False
        self._was_down: str | None = None
        self.quiescing = False
        """Shutting down: renew what is held, take and start nothing more."""

    # -- the guard -------------------------------------------------------------------------

    def fresh(self) -> bool:
        return self.session is not None and \
            time.monotonic() - self.last_ok < self.timing.fence_after

    def may_act(self, target: str) -> bool:
        """True while this instance owns `target` and its lock session is known alive."""
        lease = self.leases.get(target)
        return lease is not None and lease.state == "active" and self.fresh()

    def active(self) -> list[str]:
        return sorted(t for t, lease in self.leases.items() if lease.state == "active")

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        for name, monitor in self.host.monitors.items():
            monitor.runner.guard = partial(self.may_act, name)
        self._task = asyncio.create_task(self._run(), name="cluster-ownership")

    async def stop(self) -> None:
        """Hand every target back (the daemon has stopped its work) and end the session."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        session, leases = self.session, list(self.leases.values())
        self._fence_all("shutting down", log_level=logging.INFO)
        if self._deadline is not None:
            self._deadline.cancel()
        if session is not None:
            with contextlib.suppress(Exception):
                for lease in leases:
                    await asyncio.wait_for(session.release(lease.target, lease.lease_id,
                                                           lease.epoch, "stopped"), 2.0)
            with contextlib.suppress(Exception):
                await session.close()

    def adopt(self) -> None:
        """The daemon rebuilt its monitors (start-up, reload): guard them all, schedule ours."""
        for name, monitor in self.host.monitors.items():
            monitor.runner.guard = partial(self.may_act, name)
        for target, lease in list(self.leases.items()):
            if target not in self.host.monitors:
                self._fence(target, "no longer configured", logging.INFO)
                self._later(self._release(lease, "no longer configured"))
            elif lease.state == "active":
                lease.jobs = []  # a reload removed every job
                self._schedule(lease, self.host.monitors[target])
        self._ids = {}  # targets may be new: look their leases up again

    def _later(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self.session is None:
                    await self._connect()
                else:
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost session, a failed query: fence, reconnect
                why = f"lock session failed: {type(exc).__name__}: {exc}".strip()
                log.warning("instance=%s status=disconnected reason=%r", self.instance, why)
                self._fence_all(why)
                await self._drop_session()
                await asyncio.sleep(self.timing.retry)

    async def _connect(self) -> None:
        import psycopg  # here: only a daemon in a cluster (journal on PostgreSQL) loads it

        t = self.timing
        session: LockSession | None = None
        try:
            session = await asyncio.wait_for(LockSession.open(self.dsn, self.instance, t),
                                             t.session_timeout)
            sent = time.monotonic()
            registered = await asyncio.wait_for(session.register_instance(), t.fence_after)
        except (OSError, TimeoutError, psycopg.Error) as exc:
            if session is not None:
                await session.close()
            self._down(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            await asyncio.sleep(t.retry)
            return
        if not registered:
            await session.close()
            self._down("another live session holds this instance name (a second instance "
                       "with the same daemon.instance, or our previous session, not yet ended)")
            await asyncio.sleep(t.retry)
            return
        self.session, self._was_down = session, None
        self._renewed(sent)
        self._next_round = 0.0
        log.info("instance=%s status=connected session=%d", self.instance, session.backend_pid)

    def _down(self, why: str) -> None:
        # Said once per reason, not at every retry while the database stays away.
        level = logging.DEBUG if why == self._was_down else logging.WARNING
        self._was_down = why
        log.log(level, "instance=%s status=standby reason=%r", self.instance, why)

    async def _drop_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 1.0)

    def _renewed(self, sent: float) -> None:
        self.last_ok = sent
        if self._deadline is not None:
            self._deadline.cancel()
        delay = max(0.0, sent + self.timing.fence_after - time.monotonic())
        self._deadline = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        # Independent of the loop task, which may be stuck in a query to a silent server.
        if self.leases and not self.fresh():
            self._fence_all(f"no renewal of the lock session for {self.timing.fence_after:g}s")

    async def _tick(self) -> None:
        session, t = self.session, self.timing
        assert session is not None
        held = {target: lease.epoch for target, lease in self.leases.items()}
        sent = time.monotonic()
        confirmed = await asyncio.wait_for(session.heartbeat(held), t.fence_after)
        if not self.fresh():  # the deadline passed while we waited: the session is suspect
            raise TimeoutError(f"renewal took over {t.fence_after:g}s")
        self._renewed(sent)
        for target in set(held) - confirmed:
            self._fence(target, "its lease names another owner")
            self.leases.pop(target, None)
        await self._save_first_probes(session)
        now = time.monotonic()
        for lease in list(self.leases.values()):
            if lease.state == "pending" and now >= lease.ready_at and not self.quiescing:
                await self._activate(session, lease)
        if now >= self._next_round and not self.quiescing:
            self._next_round = now + t.retry
            await asyncio.wait_for(self._round(session), t.fence_after)
        pending = [lease.ready_at - time.monotonic() for lease in self.leases.values()
                   if lease.state == "pending"]
        await asyncio.sleep(max(0.01, min([t.heartbeat, *pending])))

    # -- taking, starting and handing back targets ------------------------------------------

    def _order(self, names: list[str]) -> list[str]:
        if not names:
            return []
        k = zlib.crc32(self.instance.encode()) % len(names)
        return names[k:] + names[:k]

    async def _round(self, session: LockSession) -> None:
        names = sorted(self.host.monitors)
        if set(names) - set(self._ids):
            self._ids = await session.lease_ids(names)
        alive = max(1, await session.alive_instances())
        fair = math.ceil(len(names) / alive)
        if len(self.leases) > fair and alive > 1:
            for target in reversed(self._order(names)):
                lease = self.leases.get(target)
                monitor = self.host.monitors.get(target)
                if lease and lease.state == "active" and not (monitor and monitor.busy):
                    self._fence(target, f"rebalancing: {alive} instances share "
                                f"{len(names)} targets", logging.INFO)
                    await self._release(lease, "rebalanced")
                    return
        for target in self._order(names):
            if len(self.leases) >= fair:
                return
            if target in self.leases or target not in self._ids:
                continue
            if await session.try_lock(self._ids[target]):
                claimed = await session.claim(target, self._ids[target])
                self.leases[target] = Lease(target, self._ids[target], claimed.epoch,
                                            time.monotonic() + claimed.wait)
                log.info("target=%s status=acquired instance=%s epoch=%d previous=%s "
                         "starts_in=%.1fs", target, self.instance, claimed.epoch,
                         claimed.previous or "-", claimed.wait)

    async def _activate(self, session: LockSession, lease: Lease) -> None:
        monitor = self.host.monitors.get(lease.target)
        if monitor is None:
            await self._release(lease, "no longer configured")
            return
        if monitor.busy:
            return  # our own cancelled work for it is still unwinding; next tick
        await session.activate(lease.target, lease.epoch)
        lease.state = "active"
        if not self.may_act(lease.target):
            return
        monitor = self.host.monitors[lease.target] = self.host.new_monitor(lease.target)
        monitor.runner.guard = partial(self.may_act, lease.target)
        # As at a start-up, for this target: a step left running is checked by its executor.
        await self.host.recover_interrupted(lease.target)
        self._schedule(lease, monitor)
        log.info("target=%s status=owned instance=%s epoch=%d", lease.target, self.instance,
                 lease.epoch)

    async def _release(self, lease: Lease, reason: str) -> None:
        self.leases.pop(lease.target, None)
        if self.session is not None:
            await self.session.release(lease.target, lease.lease_id, lease.epoch, reason)
        log.info("target=%s status=released instance=%s reason=%r", lease.target,
                 self.instance, reason)

    async def _save_first_probes(self, session: LockSession) -> None:
        for lease in self.leases.values():
            if lease.first_probe is not None and not lease.first_probe_saved:
                lease.first_probe_saved = True
                await session.first_probe(lease.target, lease.epoch, lease.first_probe)

    # -- scheduling and fencing ---------------------------------------------------------------

    def _schedule(self, lease: Lease, monitor: TargetMonitor) -> None:
        lease.monitors = [m for m in lease.monitors if m.busy] + [monitor]
        lease.jobs += self.host.scheduler.schedule(monitor,
                                                   wrap=partial(self._fenced, lease))

    def _fenced(self, lease: Lease, func: Callable[..., Awaitable[Any]]
                ) -> Callable[..., Awaitable[None]]:
        """A scheduled job of an owned target: runs only while owned, cancellable by a fence."""

        async def job(*args: Any) -> None:
            if not self.may_act(lease.target) or self.leases.get(lease.target) is not lease:
                return
            task = asyncio.current_task()
            assert task is not None
            lease.running.add(task)
            if lease.first_probe is None:
                lease.first_probe = datetime.now(UTC)
                log.info("target=%s status=first-probe instance=%s epoch=%d", lease.target,
                         self.instance, lease.epoch)
            try:
                await func(*args)
            except asyncio.CancelledError:
                log.debug("target=%s status=job-cancelled", lease.target)
            finally:
                lease.running.discard(task)

        return job

    def _fence(self, target: str, reason: str, log_level: int = logging.WARNING) -> None:
        """Stop all work for the target now: no job runs again, running ones are cancelled
        (a cancelled rollback journals nothing: the runner's guard already says no)."""
        lease = self.leases.get(target)
        if lease is None:
            return
        lease.state = "pending"
        lease.ready_at = math.inf
        self.host.scheduler.unschedule(lease.jobs)
        lease.jobs = []
        for task in list(lease.running):
            task.cancel()
        for monitor in {id(m): m for m in (*lease.monitors, self.host.monitors.get(target))
                        if m is not None}.values():
            if monitor.desk.task is not None and not monitor.desk.task.done():
                monitor.desk.task.cancel()
        lease.monitors = []
        if not self._stopping and target in self.host.monitors:
            # What it saw is another owner's business now; status shows it unprobed here.
            monitor = self.host.monitors[target] = self.host.new_monitor(target)
            monitor.runner.guard = partial(self.may_act, target)
        log.log(log_level, "target=%s status=stopped instance=%s reason=%r", target,
                self.instance, reason)

    def _fence_all(self, reason: str, log_level: int = logging.WARNING) -> None:
        for target in list(self.leases):
            self._fence(target, reason, log_level)
        self.leases.clear()
        self.last_ok = -math.inf

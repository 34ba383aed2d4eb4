"""The daemon's own faults, told apart from its targets': self_degraded.

Out of file descriptors, memory or disk for its state, unable to spawn a command, an event loop
that lags: a probe run then fails for the daemon's reasons, not the target's (found: 1,100 idle
control connections under 1,024 descriptors made the health probe fail with "Too many open
files", blamed on the app). While any of these holds, the daemon is self_degraded: observations
do not count, nothing is evaluated, no action is taken, a gauge says why, and on-call gets one
mail per episode. An episode ends once no fault was seen for `clear_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.notices import Notice
from rollbackd.probes.observation import Observation

log = logging.getLogger("rollbackd.selfcheck")

REASONS = ("descriptors", "memory", "disk", "spawn", "loop_lag")
"""The gauge's reason label: a fixed set."""

Tell = Callable[[Notice], object]
"""The outbox's send: a mail about no incident."""

# What an observation's error says when the daemon, not the target, ran out of something.
# EMFILE and ENFILE ("... in system") share the words; ENOMEM and Python's MemoryError.
_OWN_FAULT_WORDS = (
    ("Too many open files", "descriptors"),
    (os.strerror(errno.ENOMEM), "memory"),
    ("MemoryError", "memory"),
)

_ADVICE = {
    "descriptors": "Raise LimitNOFILE= in the unit, or find what holds descriptors "
                   "(ls /proc/PID/fd); daemon.max_control_connections caps socket clients.",
    "memory": "The host or the service's memory limit is exhausted (free -m, MemoryMax=).",
    "disk": "Free space where the journal lives (daemon.state_dir): df -h.",
    "spawn": "Commands cannot be started (fork/exec failed): check process and memory limits "
             "(TasksMax=, ulimit -u).",
    "loop_lag": "The daemon's event loop was blocked or starved of CPU: check the host's load "
                "and `journalctl -u rollbackd`.",
}


@dataclass(frozen=True)
class Limits:
    fd_reserve: int = 64
    """Descriptors that must stay free (probes, the journal, a spawned command need some)."""
    disk_min_free: int = 64 * 1024 * 1024
    """Bytes that must stay free on the state directory's file system..."""
    disk_min_share: float = 0.1
    """...or this share of it, whichever is less (a state tmpfs of a few MiB is short only
    when nearly full)."""
    memory_min_available: int = 32 * 1024 * 1024
    """MemAvailable below this is out of memory."""
    loop_lag: float = 2.0
    """Seconds the loop may run late before its own lateness, not the target, explains probes
    that time out."""
    period: float = 1.0
    """Seconds between checks of descriptors, disk, memory and loop lag."""
    spawn_every: float = 30.0
    """Seconds between test spawns of a trivial command."""
    clear_after: float = 5.0
    """The episode ends once no fault was seen for this long: one mail per episode, not per
    flap."""


def own_fault(detail: str) -> str | None:
    """The reason, when an observation's error is the daemon's own; else None."""
    for words, reason in _OWN_FAULT_WORDS:
        if words in detail:
            return reason
    return None


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1,024
    while its hard one is far higher); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # a seccomp filter (@resources) may forbid it
        log.warning("descriptors limit=%d hard=%d status=not-raised reason=%r", soft, hard,
                    str(exc))
        return soft
    log.info("descriptors limit=%d raised_from=%d", hard, soft)
    return hard


class SelfCheck:
    def __init__(self, state_dir: Path, registry: CollectorRegistry, tell: Tell | None = None,
                 limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = state_dir
        self.tell = tell
        self.limits = limits
        self.clock = clock
        self.gauge = Gauge("rollbackd_self_degraded",
                           "1 while the daemon itself is short of this (descriptors, memory, "
                           "disk, spawn, loop_lag): it acts on no target meanwhile",
                           ["reason"], registry=registry)
        for reason in REASONS:
            self.gauge.labels(reason).set(0)
        self._seen: dict[str, tuple[float, str]] = {}
        """reason -> (clock() when last seen, what was seen)."""
        self._episode: int | None = None
        """time.time() (whole seconds) when the current episode began; None: not degraded."""
        self._mailed = True
        self._dropped = 0
        self._due: float | None = None
        """clock() by which the periodic check should have woken: later means loop lag."""
        self._true = shutil.which("true") or "/bin/true"

    # -- what the monitors ask ------------------------------------------------------------------

    @property
    def degraded(self) -> str | None:
        """Why the daemon is self_degraded now (the first reason by REASONS order), or None."""
        active = self._active()
        return next((r for r in REASONS if r in active), None)

    def judge(self, obs: Observation) -> bool:
        """True: the daemon is self_degraded, so this observation must not count (and the
        target is not evaluated). An error that is the daemon's own starts an episode."""
        self._check_lag()
        if not obs.ok:
            reason = own_fault(obs.detail)
            if reason is not None:
                self.note(reason, f"probe {obs.probe}: {obs.detail}")
        if self.degraded is None:
            return False
        self._dropped += 1
        return True

    def note(self, reason: str, detail: str) -> None:
        """A fault of the daemon's own, seen now."""
        if reason not in REASONS:
            raise ValueError(f"unknown self_degraded reason {reason!r}")
        new = reason not in self._active()
        self._seen[reason] = (self.clock(), detail)
        self.gauge.labels(reason).set(1)
        if self._episode is None:
            self._episode = int(time.time())
            self._mailed = False
            self._dropped = 0
            self._mail()
        if new:
            log.warning("self_degraded reason=%s detail=%r action=none on any target; "
                        "observations do not count", reason, detail)

    # -- the periodic check ----------------------------------------------------------------------

    async def run(self) -> None:
        next_spawn = self.clock()
        while True:
            self.check()
            if self.clock() >= next_spawn:
                await self.check_spawn()
                next_spawn = self.clock() + self.limits.spawn_every
            self._due = self.clock() + self.limits.period
            await asyncio.sleep(self.limits.period)
            self._check_lag()
            self._due = None

    def check(self) -> None:
        """Descriptors, disk and memory now; ends the episode once all held for clear_after."""
        self._check_descriptors()
        self._check_disk()
        self._check_memory()
        if not self._mailed:
            self._mail()  # the journal could not take it before: try again
        active = self._active()
        for reason in REASONS:
            self.gauge.labels(reason).set(1 if reason in active else 0)
        if self._episode is not None and not active:
            log.warning("self_degraded status=cleared after=%.0fs dropped_observations=%d",
                        time.time() - self._episode, self._dropped)
            self._episode = None
            self._seen.clear()

    async def check_spawn(self) -> None:
        proc: asyncio.subprocess.Process | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                self._true, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            self.note("spawn", f"{self._true} did not exit within 10 s")
        except OSError as exc:
            reason = own_fault(os.strerror(exc.errno)) if exc.errno else None
            self.note(reason or "spawn", f"cannot start {self._true}: {exc}")
        finally:
            # Timed out, or cancelled at shutdown: the probe process is killed and reaped, never
            # left running behind a closed loop.
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def _active(self) -> set[str]:
        now = self.clock()
        return {r for r, (at, _) in self._seen.items() if now - at < self.limits.clear_after}

    def _check_lag(self) -> None:
        if self._due is None:
            return
        late = self.clock() - self._due
        if late > self.limits.loop_lag:
            self.note("loop_lag", f"the event loop ran {late:.1f}s late")

    def _check_descriptors(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            count = len(os.listdir("/proc/self/fd"))  # needs one descriptor itself
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.note("descriptors", f"cannot open even one more: {exc.strerror}")
            return
        if soft != resource.RLIM_INFINITY and soft - count < self.limits.fd_reserve:
            self.note("descriptors", f"{count} of {soft} descriptors in use (fewer than "
                                     f"{self.limits.fd_reserve} free)")

    def _check_disk(self) -> None:
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return  # the journal's own errors say more
        free = st.f_bavail * st.f_frsize
        # A small state file system (a tmpfs of a few MiB) is short only below a tenth of it.
        least = min(self.limits.disk_min_free,
                    self.limits.disk_min_share * st.f_blocks * st.f_frsize)
        if free < least:
            self.note("disk", f"{free / (1024 * 1024):.1f} MiB free under {self.state_dir}")

    def _check_memory(self) -> None:
        available = _mem_available()
        if available is not None and available < self.limits.memory_min_available:
            self.note("memory", f"{available // (1024 * 1024)} MiB of memory available")

    def _mail(self) -> None:
        if self.tell is None or self._episode is None:
            self._mailed = True
            return
        reason = self.degraded
        if reason is None:
            return
        detail = self._seen[reason][1]
        try:
            self.tell(notices.self_degraded(
                str(self._episode), reason,
                f"rollbackd is short of {reason}: {detail}\n\n"
                "This is the daemon's own fault, not its targets'. While it lasts rollbackd "
                "takes no action on any target and probe results do not count, so nothing is "
                "rolled back and no incident opens; the gauge rollbackd_self_degraded says "
                "when it is over (the log says `self_degraded status=cleared`).\n\n"
                f"{_ADVICE[reason]}\n"))
        except Exception as exc:  # noqa: BLE001 - out of descriptors or disk: next check retries
            log.error("self_degraded mail=not-queued reason=%r (retried)", str(exc))
            return
        self._mailed = True


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None

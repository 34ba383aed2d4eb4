"""systemd notification: READY, STATUS, STOPPING, and WATCHDOG only while the loop progresses."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import sdnotify

log = logging.getLogger("rollbackd.notify")


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends; None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        log.warning("notify status=ignored reason=bad WATCHDOG_USEC %r", usec)
        return None


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        # sdnotify opens its socket even when NOTIFY_SOCKET is unset; not systemd's child, no socket.
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None

    def send(self, state: str) -> None:
        if self._sd is not None:
            self._sd.notify(state)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    async def watchdog(self, interval: float) -> None:
        """Ping at `interval` while this task keeps being scheduled on time.

        A frozen event loop never runs this coroutine, so systemd hears nothing and restarts
        us; a loop that wakes us far too late was stalled, so that ping is skipped as well.
        """
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - before < interval * 1.9:
                self.send("WATCHDOG=1")
            else:
                log.warning("watchdog status=skipped reason=event loop stalled %.1fs",
                            now - before - interval)

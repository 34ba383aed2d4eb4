"""The daemon's clock: UTC wall time that does not step.

Every duration that decides something (the rollback window and cooldown, flapping, the tier
timeouts, stable_after, pauses, backup retention) is a difference of two timestamps from here.
The system clock can be stepped (NTP after a long suspend, a VM restored, `date -s`); this one
moves only as the boot-time clock does (CLOCK_BOOTTIME: never stepped, and counting suspend),
from a wall time read once:

- at the first start after a boot, the wall time then;
- at a restart within the same boot, the anchor the previous run left in the state directory,
  so a step while the daemon was down does not make recent records old (or old ones recent).

A step is seen as the difference between the system clock and this one (`offset()`): it is
logged once, exported as a metric, and every timeline event written meanwhile says so. Across a
reboot nothing is known of the time that passed; the wall clock is taken as it is, and records
dated after it are treated as written now (`reconcile`), so a clock set back cannot keep a
limit open for hours.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("rollbackd.clock")

STEP = 2.0
"""Seconds the system clock may differ from this one before it counts as stepped."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SteplessClock:
    def __init__(self) -> None:
        self.anchor(time.time(), _boot())

    def anchor(self, wall: float, boot: float) -> None:
        self._wall, self._boot = wall, boot

    def timestamp(self) -> float:
        return self._wall + (_boot() - self._boot)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp(), UTC)

    def offset(self) -> float:
        """How far the system clock is ahead of this one (negative: behind)."""
        return time.time() - self.timestamp()

    def continue_from(self, state_dir: Path) -> str:
        """Take up the anchor a previous run of this boot left; leave ours. Says what it did."""
        path = state_dir / "clock.json"
        boot_id = _boot_id()
        try:
            saved = json.loads(path.read_text())
            if boot_id and saved.get("boot_id") == boot_id:
                self.anchor(float(saved["wall"]), float(saved["boot"]))
                how = "continued from the previous run of this boot"
            else:
                how = "anchored at the system clock (first start since boot)"
        except (OSError, ValueError, KeyError, TypeError):
            how = "anchored at the system clock (no earlier anchor)"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"boot_id": boot_id, "wall": self._wall, "boot": self._boot}))
        os.replace(tmp, path)
        return how


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


CLOCK = SteplessClock()


def now_utc() -> datetime:
    return CLOCK.now()


def offset() -> float:
    return CLOCK.offset()


def stepped() -> float | None:
    """The system clock's step against this clock, when it is one (|offset| > STEP)."""
    off = CLOCK.offset()
    return off if abs(off) > STEP else None


def reconcile(value: datetime | None, now: datetime | None = None) -> datetime | None:
    """A stored time dated after now (the clock went back while the daemon was down) counts as
    now: never in the future, so no limit stays open (or closed) for the size of the step."""
    if value is None:
        return None
    now = now or now_utc()
    return min(value, now)

"""The start period: a release or a process that is still starting is not a failing one.

Like Docker's HEALTHCHECK --start-period, Kubernetes' startup probe and Nomad's
min_healthy_time: for `start_period` seconds after a deploy or a restart, failed probes do not
count toward app_down, unless the process exited (or the container stopped) meanwhile. A
release still failing when the period ends is rolled back as ever. Pure: times are the
monitor's time.monotonic() seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Start:
    """A deploy or a restart: when it happened and what it was, in words."""

    at: float
    """time.monotonic() seconds of the deploy or restart."""
    cause: str
    """"release 1a2b3c4 deployed", "process pid 4242 started", ..."""
    release: bool = False
    """A new release (a version change), not a restart of the same one."""


class Phase(StrEnum):
    NONE = "none"  # no start period applies: app_down as always
    HOLD = "hold"  # starting: failed probes do not count toward app_down yet
    EXITED = "exited"  # the process exited within the period: acted on at once
    OVER = "over"  # the period ended with the app still failing: acted on, and said so


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    note: str = ""
    """The sentence for the incident's reason (report and mail); empty for NONE."""


def opens(current: Start | None, seen: Start, healthy_since: bool) -> bool:
    """Whether `seen` begins a start period of its own.

    A new release always does. A process restart does when it is newer than the current start
    and the target was healthy at some moment since that start: an app that keeps crashing and
    being restarted by its supervisor gets one start period, not a fresh one per restart (which
    would hold app_down for ever)."""
    if current is None:
        return True
    if seen.at <= current.at + 1.0:  # the same start seen twice (a deploy is also a restart)
        return False
    return seen.release or healthy_since


def judge(start: Start | None, now: float, period: float, running: bool | None,
          held: bool) -> Verdict:
    """What the start period says of an app_down found at `now`.

    running: whether the app's process runs (False: exited, container stopped; None: cannot
    tell, which does not end the period early). held: app_down was held for this start."""
    if start is None or period <= 0:
        return Verdict(Phase.NONE)
    age = max(0.0, now - start.at)
    if age < period:
        if running is False:
            return Verdict(Phase.EXITED, f"the process exited {age:.0f}s into the {period:g}s "
                           f"start period after {start.cause}: not waiting for the period "
                           "to end")
        return Verdict(Phase.HOLD, f"starting: {start.cause} {age:.0f}s ago, within the "
                       f"{period:g}s start period")
    if held:
        return Verdict(Phase.OVER, f"still failing after the {period:g}s start period after "
                       f"{start.cause}")
    return Verdict(Phase.NONE)

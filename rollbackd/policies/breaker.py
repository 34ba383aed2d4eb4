"""Circuit breaker per target and plan kind: closed -> open -> half-open, as data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class BreakerMode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Breaker:
    mode: BreakerMode = BreakerMode.CLOSED
    failures: tuple[datetime, ...] = ()
    opened_at: datetime | None = None


def current(b: Breaker, now: datetime, reset_after: float) -> Breaker:
    """The breaker as it stands at `now`: an open one turns half-open once its reset time passed."""
    if b.mode is BreakerMode.OPEN and b.opened_at is not None:
        if now - b.opened_at >= timedelta(seconds=reset_after):
            return replace(b, mode=BreakerMode.HALF_OPEN)
    return b


# Both take the breaker as the journal stored it and bring it up to `now` first: the stored mode
# says "open" long after the reset time made it half-open, and the trial's outcome must count.


def record_failure(
    b: Breaker, now: datetime, threshold: int, window: float, reset_after: float
) -> Breaker:
    b = current(b, now, reset_after)
    recent = tuple(t for t in b.failures if now - t < timedelta(seconds=window)) + (now,)
    if b.mode is BreakerMode.HALF_OPEN or len(recent) >= threshold:
        return Breaker(BreakerMode.OPEN, recent, now)
    return replace(b, failures=recent)


def record_success(b: Breaker, now: datetime, reset_after: float) -> Breaker:
    b = current(b, now, reset_after)
    return Breaker() if b.mode is BreakerMode.HALF_OPEN else b

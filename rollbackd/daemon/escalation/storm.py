"""Storm grouping: past `storm_max` incidents in a window, mails are held and sent as digests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from rollbackd.daemon.journal import HeldMail


def grouped(storm_rank: int, storm_max: int) -> bool:
    """Whether an incident's mails go to digests: it opened after `storm_max` others in the
    window. Its rank never changes, so all of its mails are grouped or none are."""
    return storm_rank > storm_max


def digest_due(held: Sequence[HeldMail], now: datetime, delay: float) -> bool:
    """A digest goes out once the oldest held mail has waited `delay`: at most one per delay."""
    if not held:
        return False
    oldest = min(h.created_at for h in held)
    return now - oldest >= timedelta(seconds=delay)

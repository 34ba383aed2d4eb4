"""Storm grouping: past `storm_max` incidents in a window, mails are held and sent as digests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any


def grouped(storm_rank: int, storm_max: int) -> bool:
    """Whether an incident's mails go to digests: it opened after `storm_max` others in the
    window. Its rank never changes, so all of its mails are grouped or none are."""
    return storm_rank > storm_max


def digest_due(held: Sequence[Mapping[str, Any]], now: datetime, delay: float) -> bool:
    """A digest goes out once the oldest held mail has waited `delay`: at most one per delay."""
    if not held:
        return False
    oldest = min(datetime.fromisoformat(str(h["created_at"])) for h in held)
    return now - oldest >= timedelta(seconds=delay)

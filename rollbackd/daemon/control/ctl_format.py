"""rollbackctl's one way of showing a time, a duration, a size and a yes/no to a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TIME_KEYS = frozenset({"at", "detected", "until", "created_at", "opened_at", "since", "first_seen",
                       "known_good_at", "bad_at", "expires_at", "restore_tested_at",
                       "was_locked_until", "started_at", "finished_at", "acked_at", "last_run",
                       "next_run", "last_passed", "due", "detected_at", "resolved_at"})
"""Result keys that hold a point in time (ISO text from the journal, or Unix seconds)."""
DURATION_KEYS = frozenset({"duration", "uptime", "seconds", "detect_seconds", "recover_seconds",
                           "verify_seconds", "elapsed"})
SIZE_KEYS = frozenset({"size", "bytes"})


def parse_time(value: Any) -> datetime | None:
    """A time as the daemon sends it; naive times are UTC (the journal stores UTC)."""
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and value:
        try:
            at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def local_time(value: Any) -> str:
    """Local time with its UTC offset, to the second: 2024-05-01 14:03:12 +02:00."""
    at = parse_time(value)
    if at is None:
        return str(value)
    local = at.astimezone()
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def ago(value: Any, now: datetime | None = None) -> str:
    """How long ago (or from now) a time is, in the largest whole unit: "5 min ago", "in 2 h"."""
    at = parse_time(value)
    if at is None:
        return ""
    delta = ((now or datetime.now(UTC)) - at).total_seconds()
    text = _coarse(abs(delta))
    if text == "now":
        return "just now"
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _coarse(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "now"


def time_cell(value: Any, now: datetime | None = None) -> str:
    """A time in a table: the local time, then how long ago."""
    when = ago(value, now)
    return f"{local_time(value)} ({when})" if when else local_time(value)


def duration(seconds: Any) -> str:
    """12 ms, 1.2 s, 3 min 4 s, 2 h 5 min, 3 d 4 h."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return str(seconds)
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    units = (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1))
    big, big_size, small, small_size = next(u for u in units if s >= u[1])
    rest = int(s % big_size // small_size)
    return f"{int(s // big_size)} {big}" + (f" {rest} {small}" if rest else "")


def size(n: Any) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 20.0 MiB."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cell(key: str, value: Any, now: datetime | None = None) -> str:
    """One table cell, shown by what its column holds."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in TIME_KEYS:
        return time_cell(value, now)
    if key in DURATION_KEYS:
        return duration(value)
    if key in SIZE_KEYS:
        return size(value)
    return str(value)

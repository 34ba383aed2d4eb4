"""New log lines: what the app's log said after the onset that it did not say in the hour
before, normalized so that numbers and ids do not make every line new; secrets masked."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rollbackd.daemon.incidents.change import Change, ChangeKind

MAX_TAIL = 8 << 20
"""Bytes read from the end of the log at most (an hour and a bit of a busy app)."""
MOST_LINES = 3
MAX_SHOWN = 200
BEFORE = timedelta(hours=1)

# A leading timestamp: 2026-12-07 20:11:22,123 / 2026-12-07T20:11:22.123Z / ...+01:00
_STAMP = re.compile(r"^\[?(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})([.,]\d+)?"
                    r"(Z|[+-]\d{2}:?\d{2})?\]?\s*")
_SECRET = re.compile(r"(?i)\b([\w.-]*(?:password|passwd|secret|token|api[_-]?key|"
                     r"authorization|cookie|session|dsn|credential)[\w.-]*)(\s*[=:]\s*)"
                     r"(\"[^\"]*\"|'[^']*'|\S+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_URL_CREDS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_LONG_TOKEN = re.compile(r"\b[A-Za-z0-9+/_-]{32,}={0,2}")
# What varies between two occurrences of the same line: ids, addresses, figures.
_VARYING = [
    re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    re.compile(r"\b0x[0-9a-fA-F]+\b"),
    re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{7,}\b"),
    re.compile(r"\d+(\.\d+)*"),
]


def mask(line: str) -> str:
    """The line with secret-looking values replaced: key=value pairs named like a secret,
    Authorization values, URL credentials, long tokens."""
    line = _BEARER.sub(lambda m: f"{m.group(1)} <hidden>", line)  # before "Authorization: x"
    line = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}<hidden>", line)
    line = _URL_CREDS.sub("://<hidden>@", line)
    return _LONG_TOKEN.sub("<token>", line)


def normalize(line: str) -> str:
    """The line's shape: its timestamp dropped, secrets masked, ids and figures as #."""
    text = mask(_STAMP.sub("", line))
    for pattern in _VARYING:
        text = pattern.sub("#", text)
    return " ".join(text.split())


def stamp(line: str) -> datetime | None:
    """The line's leading timestamp (naive: the host's local time, as logging's asctime)."""
    m = _STAMP.match(line)
    if m is None:
        return None
    frac = (m.group(3) or ".0")[1:7]
    zone = m.group(4) or ""
    try:
        at = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{frac}"
                                    + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.astimezone()  # naive: local time


def tail(path: Path, most: int = MAX_TAIL) -> list[str]:
    """The whole lines of the log's last `most` bytes."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - most))
        data = f.read(most)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > most else lines  # the first may be cut


def dated(lines: Iterable[str]) -> list[tuple[datetime, str]]:
    """Each line with its time; a line without one (a traceback's) takes the line's above."""
    out: list[tuple[datetime, str]] = []
    last: datetime | None = None
    for line in lines:
        at = stamp(line) or last
        if at is not None and line.strip():
            out.append((at, line))
            last = at
    return out


def new_lines(lines: Iterable[str], onset: datetime, most: int = MOST_LINES) -> list[str]:
    """Up to `most` lines (masked, shortened) first seen after `onset` whose shape is not
    among the lines of the hour before it, in the order they appeared."""
    before: set[str] = set()
    found: dict[str, str] = {}
    for at, line in dated(lines):
        shape = normalize(line)
        if onset - BEFORE <= at < onset:
            before.add(shape)
        elif at >= onset and shape not in before and shape not in found:
            found[shape] = line
    shown = []
    for line in list(found.values())[:most]:
        text = " ".join(mask(line).split())
        shown.append(text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "...")
    return shown


async def log_changes(config: Any, onset: datetime) -> list[Change]:
    """The log the log_errors probes read: lines new since the onset."""
    out = []
    for probe in config.probes.values():
        if getattr(probe, "kind", None) != "log_errors":
            continue
        path = Path(getattr(probe, "path", ""))
        try:
            lines = await asyncio.to_thread(tail, path)
        except OSError as exc:
            out.append(Change(ChangeKind.NOTE, f"log {path} could not be read: "
                              f"{type(exc).__name__}", "the log_errors probe's file"))
            continue
        how = (f"{path.name} after {onset.astimezone(UTC):%H:%M:%S} UTC, not among the hour "
               "before (numbers and ids ignored; secrets masked)")
        out += [Change(ChangeKind.LOG, line, how) for line in new_lines(lines, onset)]
    return out

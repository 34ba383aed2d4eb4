"""log_errors: count error lines appended to a log since the last check, across rotation."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from rollbackd.probes.base import AbsolutePath, BaseProbe, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

MAX_READ = 32 << 20
"""Bytes read per check at most, so a flood cannot stall a check; the rest is read next time."""
MAX_LINE_SHOWN = 200


class LogErrorsSettings(ProbeSettings):
    kind: Literal["log_errors"] = "log_errors"
    path: AbsolutePath
    """Absolute path of the log file to follow."""
    pattern: str = "ERROR|Traceback|CRITICAL"
    """Python regular expression; a line that contains a match counts as an error line."""
    max_errors: int = Field(default=0, ge=0)
    """More error lines than this since the last check fail the probe."""
    from_start: bool = False
    """Read the file from its start on the first check instead of from its current end."""
    missing_is_failure: bool = False
    """A missing log file fails the probe (symptom log_errors) instead of passing with a note."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


@dataclass(frozen=True)
class Position:
    """Where the next check resumes: which file (device, inode) and the byte offset in it."""

    dev: int
    ino: int
    offset: int


@dataclass(frozen=True)
class _Scan:
    position: Position | None  # None: the file is missing
    errors: int = 0
    last: str = ""
    read: int = 0
    note: str = ""  # why reading started where it did (first check, rotation, truncation)
    left: int = 0  # bytes past MAX_READ, read on the next check


def scan(path: str, pattern: re.Pattern[str], before: Position | None, first: bool,
         from_start: bool) -> _Scan:
    """Blocking (stat and read), so called in a thread; only whole lines are consumed."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            offset, note = _start(st, before, first, from_start)
            f.seek(offset)
            data = f.read(MAX_READ)
    except FileNotFoundError:
        return _Scan(None)
    end = data.rfind(b"\n") + 1  # a line still being written is counted when it is finished
    errors, last = 0, ""
    for raw in data[:end].splitlines():
        line = raw.decode("utf-8", errors="replace")
        if pattern.search(line):
            errors, last = errors + 1, line
    left = max(0, st.st_size - offset - end) if len(data) == MAX_READ else 0
    return _Scan(Position(st.st_dev, st.st_ino, offset + end), errors, last, end, note, left)


def _start(st: os.stat_result, before: Position | None, first: bool,
           from_start: bool) -> tuple[int, str]:
    if before is None:
        if first and not from_start:
            return st.st_size, f"started following at byte {st.st_size}"
        return 0, "read from the start" if first else "the file appeared, read from the start"
    if (st.st_dev, st.st_ino) != (before.dev, before.ino):
        return 0, "the file was rotated, read the new one from the start"
    if st.st_size < before.offset:
        return 0, f"the file was truncated to {st.st_size} bytes, read from the start"
    return before.offset, ""


class LogErrorsProbe(BaseProbe[LogErrorsSettings]):
    kind: ClassVar[str] = "log_errors"

    def __init__(self, name: str, settings: LogErrorsSettings) -> None:
        super().__init__(name, settings)
        self._pattern = re.compile(settings.pattern)
        self._position: Position | None = None
        self._checked = False

    def crashed(self, exc: Exception, started: float) -> Observation:
        return self.error(f"cannot read {self.settings.path}: {type(exc).__name__}: {exc}.",
                          started)

    async def run(self, started: float) -> Observation:
        s = self.settings
        found = await asyncio.to_thread(scan, str(s.path), self._pattern, self._position,
                                        not self._checked, s.from_start)
        self._checked, self._position = True, found.position
        if found.position is None:
            if s.missing_is_failure:
                return self.fail(f"log file missing: {s.path}.", started, Symptom.LOG_ERRORS)
            return self.ok(f"log file missing: {s.path}.", started)
        return self._judge(found, started)

    def _judge(self, found: _Scan, started: float) -> Observation:
        s = self.settings
        metrics = {"error_lines": float(found.errors), "bytes_read": float(found.read)}
        lines = "line" if found.errors == 1 else "lines"
        said = f"{found.errors} error {lines} in {found.read} new bytes of {s.path.name}"
        extra = "".join(f"; {n}" for n in (
            found.note, f"{found.left} bytes left for the next check" if found.left else "") if n)
        if found.errors > s.max_errors:
            last = found.last.strip()
            last = last if len(last) <= MAX_LINE_SHOWN else last[: MAX_LINE_SHOWN - 3] + "..."
            return self.fail(f"{said} (limit {s.max_errors}){extra}; last: {last}", started,
                             Symptom.LOG_ERRORS, None, metrics)
        return self.ok(f"{said} (limit {s.max_errors}){extra}.", started, None, metrics)

"""The one shape every probe returns: a frozen Observation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"  # the probe ran and the target is unhealthy
    ERROR = "error"  # the probe itself could not run (bad config, crashed, timed out)


class Symptom(StrEnum):
    """What a failing observation tells the decision tree; bounded, so usable as a metric label."""

    UNREACHABLE = "unreachable"  # connection refused or reset
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"  # 5xx
    BAD_RESPONSE = "bad_response"  # unexpected status or body
    PROBE_ERROR = "probe_error"  # the probe crashed: not evidence about the target


@dataclass(frozen=True)
class Observation:
    probe: str
    kind: str
    status: Status
    detail: str
    duration: float
    symptom: Symptom | None = None
    version: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

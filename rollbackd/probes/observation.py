"""The one shape every probe returns: a frozen Observation."""

from __future__ import annotations

from collections.abc import Mapping
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
    SLOW = "slow"  # answered, but latency is above its limit
    WRONG_CREDENTIALS = "wrong_credentials"  # 401/403 for the known-good probe account
    ACCOUNT_LOCKED = "account_locked"  # 423 for the probe account
    LOGINS_REFUSED = "logins_refused"  # a second known-good account refused too: not the probe's
    STEP_FAILED = "step_failed"  # a journey step after the log-in failed (the detail names it)
    CONTAINER_DOWN = "container_down"  # exited, restarting, crash-looping, unhealthy
    INTEGRITY = "integrity"  # integrity_check / quick_check / amcheck found corruption
    MISSING_TABLE = "missing_table"
    BAD_REVISION = "bad_revision"  # alembic_version not on the known list
    ROWS_COLLAPSED = "rows_collapsed"  # a row count fell too far below its known-good value
    KEY_INVALID = "key_invalid"  # encryption key unreadable, malformed, or cannot decrypt
    LOG_ERRORS = "log_errors"  # too many error lines in the log per interval
    BACKUP_STALE = "backup_stale"
    DEPENDENCY_DOWN = "dependency_down"  # a service the app needs (database, Redis) is down
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
    """The version the probe saw (image digest, revision, alembic revision), if any."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Figures for baselines and reports (latency_seconds, rows.users, error_lines, ...)."""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

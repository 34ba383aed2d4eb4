"""Alertmanager's webhook payload (version 4), validated into frozen models."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollbackd.probes.alertmanager import AlertSignal


class PayloadError(Exception):
    """The body is not a webhook notification; the reason is safe to send back (no body echo)."""


class _Model(BaseModel):
    # Alertmanager adds fields over time; unknown ones are ignored, missing required ones are not.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Model):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    """For a firing alert Alertmanager sends the zero time 0001-01-01T00:00:00Z."""
    generatorURL: str = ""
    fingerprint: str = ""

    def firing(self, now: datetime) -> bool:
        if self.status != "firing":
            return False
        ends = self.endsAt
        if ends is None or ends.year <= 1:
            return True
        # An end time in the past means resolved, whatever the status says.
        return (ends if ends.tzinfo else ends.replace(tzinfo=UTC)) > now

    def signal(self, now: datetime) -> AlertSignal:
        fingerprint = self.fingerprint or hashlib.sha256(
            json.dumps(sorted(self.labels.items())).encode()).hexdigest()[:16]
        return AlertSignal(fingerprint, self.firing(now), dict(self.labels),
                           dict(self.annotations), self.startsAt)


class Notification(_Model):
    version: Literal["4"]
    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[Alert]
    groupKey: str
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)


def parse(body: bytes) -> Notification:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise PayloadError("body is not JSON") from None
    try:
        return Notification.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise PayloadError(f"not an Alertmanager v4 notification: {where}: {first['msg']}") \
            from None


def now_utc() -> datetime:
    return datetime.now(UTC)

"""Alertmanager's webhook payload (version 4), built as Alertmanager's notify/webhook sends it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time.Time: the endsAt of every firing alert in a webhook notification."""
EXTERNAL_URL = "http://127.0.0.1:9093"


def fingerprint(labels: dict[str, str]) -> str:
    # Alertmanager's is a 64-bit hash of the label set as 16 hex digits; any stable one will do.
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


def alert(labels: dict[str, str], status: str = "firing", summary: str = "",
          starts_at: str = "2024-05-01T10:45:02.123456789Z", ends_at: str | None = None,
          ) -> dict[str, Any]:
    return {
        "status": status,
        # A copy: callers (the fuzzer) mutate the body, and the label sets here are shared.
        "labels": dict(labels),
        "annotations": {"summary": summary} if summary else {},
        "startsAt": starts_at,
        "endsAt": ends_at or (ZERO_TIME if status == "firing" else "2024-05-01T10:52:02.5Z"),
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up&g0.tab=1",
        "fingerprint": fingerprint(labels),
    }


def notification(*alerts: dict[str, Any], group_by: tuple[str, ...] = ("alertname",),
                 receiver: str = "rollbackd") -> dict[str, Any]:
    """One webhook body; its status is firing while any of its alerts fires."""
    common = dict(set.intersection(*(set(a["labels"].items()) for a in alerts))) if alerts else {}
    group = {k: v for k, v in common.items() if k in group_by}
    return {
        "receiver": receiver,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": list(alerts),
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": EXTERNAL_URL,
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}",
        "truncatedAlerts": 0,
    }


LATENCY = {"alertname": "GradingHighLatency", "service": "grading", "severity": "page"}
ERRORS = {"alertname": "Grading5xx", "service": "grading", "severity": "page"}
BILLING = {"alertname": "BillingHighLatency", "service": "billing", "severity": "ticket"}
UNRELATED = {"alertname": "DiskFull", "instance": "db1:9100", "severity": "page"}

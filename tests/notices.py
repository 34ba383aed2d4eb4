"""Test shorthand for notices: `notice(12, "held-7", ...)` is a HELD notice of incident 12."""

from __future__ import annotations

from rollbackd.daemon.escalation.notices import Notice, NoticeKind


def notice(incident_id: int | None, event: str, subject: str = "s", body: str = "b") -> Notice:
    head, _, key = event.partition("-")
    if event.startswith("emergency-admin"):
        head, key = "emergency-admin", event.removeprefix("emergency-admin").lstrip("-")
    return Notice(NoticeKind(head), subject, body, incident_id, key=key)

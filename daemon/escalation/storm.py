"""Storm grouping: past `storm_max` incidents in a window, mails are held and sent as digests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from daemon.journal import HeldMail


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


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."


def digest(held: Sequence[HeldMail], storm_max: int,
           window: float) -> tuple[str, str, list[str]]:
    """Subject, body and recipients of one digest listing every held mail, by incident."""
    by_incident: dict[int | None, list[HeldMail]] = {}
    for h in held:
        by_incident.setdefault(h.incident_id, []).append(h)
    recipients: dict[str, None] = {}
    lines = [f"More than {storm_max} incidents opened within {window:g}s: rollbackd groups their "
             f"mails here instead of sending {len(held)} separately.", ""]
    for incident_id, mails in by_incident.items():
        first = mails[0]
        lines.append(f"Incident {incident_id}: {first.target} {first.incident_class} "
                     f"(now {first.state})")
        for m in mails:
            lines.append(f"- {m.event}: {m.subject}")
            if m.event in ("opened", "failed"):
                lines.append(f"  {_first_line(m.body)}")
        lines.append("")
        for m in mails:
            recipients.update(dict.fromkeys(m.recipients))
    lines.append("`rollbackctl incidents` lists them; `rollbackctl show ID` has each one's "
                 "evidence; `rollbackctl ack ID` acknowledges one.")
    subject = (f"[rollbackd] incident storm: {len(by_incident)} incidents, "
               f"{len(held)} updates grouped")
    return subject, "\n".join(lines) + "\n", list(recipients)


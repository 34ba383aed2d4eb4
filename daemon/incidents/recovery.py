"""Start-up recovery: steps a crash left `running` are interrupted, and their incidents held
for a person, who resumes (`approve`) or abandons (`deny`) them."""

from __future__ import annotations

import logging
from pathlib import Path

from daemon.escalation import notices
from daemon.escalation.outbox import Outbox
from daemon.journal.store import Journal
from daemon.report import write_report

log = logging.getLogger("rollbackd.incidents")


def hold_interrupted(journal: Journal, outbox: Outbox, reports_dir: Path,
                     target: str | None = None) -> list[int]:
    """Hold every incident (of `target`, or all) whose step a crash cut off; returns their ids."""
    held = []
    for incident, step in journal.steps.recover_interrupted(target):
        log.warning("incident=%d target=%s step=%s status=interrupted action=held",
                    incident.id, incident.target, step.name)
        write_report(journal, reports_dir, incident.id)
        outbox.send(notices.held(incident, step))
        held.append(incident.id)
    return held

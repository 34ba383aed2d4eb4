"""Incident reports: the runbook's documentation after a rollback, as Markdown and JSON."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.journal.store import Journal


def _secs(a: datetime | None, b: datetime | None) -> str:
    return f"{(b - a).total_seconds():.1f}s" if a and b else "-"


def build_report(journal: Journal, incident_id: int) -> dict[str, Any]:
    inc = journal.incident(incident_id)
    if inc is None:
        raise KeyError(incident_id)
    return {
        "id": inc.id,
        "target": inc.target,
        "incident_class": inc.incident_class,
        "state": inc.state,
        "reason": inc.reason,
        "from_version": inc.from_version,
        "to_version": inc.to_version,
        "timings": {
            "onset": inc.onset_at, "detected": inc.detected_at, "rollback_started": inc.started_at,
            "rolled_back": inc.rolled_back_at, "verified": inc.verified_at,
            "closed": inc.closed_at,
        },
        "held_reason": inc.held_reason,
        "evidence": inc.evidence,
        "steps": [
            {"name": s.name, "state": s.state, "duration": s.duration, "detail": s.detail}
            for s in journal.steps(incident_id)
        ],
        "timeline": [{"at": at, "event": ev, "detail": d}
                     for at, ev, d in journal.timeline(incident_id)],
    }


def render_markdown(r: dict[str, Any]) -> str:
    t = r["timings"]
    lines = [
        f"# Incident {r['id']}: {r['target']} {r['incident_class']} ({r['state']})",
        "",
        "## Incident details",
        f"- What failed: {r['reason']}",
        f"- Onset: {t['onset'] or '-'}; detected: {t['detected']}",
        f"- Time to detect: {_secs(t['onset'], t['detected'])}; "
        f"time to recover: {_secs(t['detected'], t['verified'])}",
        "",
        "## Rollback actions",
        f"- From version {r['from_version'] or '-'} to {r['to_version'] or '-'}",
    ]
    lines += [
        f"- {s['name']}: {s['state']}"
        + (f" in {s['duration']:.2f}s" if s["duration"] is not None else "")
        + (f" - {s['detail']}" if s["detail"] else "")
        for s in r["steps"]
    ]
    if r["held_reason"]:
        lines.append(f"- Held for a person: {r['held_reason']}")
    dep = r["evidence"].get("deployment", {})
    if dep.get("branch") not in (None, "(detached)"):
        lines.append(
            f"- The branch {dep['branch']} still points at the bad commit; resetting it "
            "needs a person's authorization."
        )
    lines += ["", "## Timeline"]
    lines += [f"- {e['at']} {e['event']}: {e['detail']}" for e in r["timeline"]]
    lines += ["", "## Root cause", "Evidence collected:", "```",
              json.dumps(r["evidence"], indent=2, default=str), "```",
              "_To be completed by the responder._", "",
              "## Preventive measures", "_To be completed by the responder._", ""]
    return "\n".join(lines)


def write_report(journal: Journal, reports_dir: Path, incident_id: int) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = build_report(journal, incident_id)
    md = reports_dir / f"incident-{incident_id}.md"
    for path, text in ((md, render_markdown(report)),
                       (md.with_suffix(".json"), json.dumps(report, indent=2, default=str))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md

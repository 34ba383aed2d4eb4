"""The drill report beside the incident reports: state_dir/reports/drill-ID.md and .json."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollbackd.daemon.drills.record import DrillRun
from rollbackd.daemon.drills.scenarios import SCENARIOS
from rollbackd.daemon.drills.text import columns, scenario_rows, secs
from rollbackd.daemon.escalation.redact import redact, redact_data

LABELS = (("injected", "fault in place (injector done)"), ("detected", "detection"),
          ("approved", "approved by the drill"), ("rollback_started", "rollback start"),
          ("rolled_back", "rollback done"), ("verified", "verification done"))


def _state(snap: dict[str, Any] | None) -> str:
    if snap is None:
        return "-"
    rows = ", ".join(f"{t} {n}" for t, n in sorted(snap.get("rows", {}).items())) or "no tables"
    version = snap.get("version") or "none"
    return (f"version {version[:12]}, revision {snap.get('revision') or 'none'}, key "
            f"{snap.get('key') or 'none'}, rows: {rows}; login: {snap.get('login')}")


def _when(text: Any) -> str:
    if not isinstance(text, str) or not text:
        return "-"
    return f"{datetime.fromisoformat(text).astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"


def render_markdown(run: dict[str, Any]) -> str:
    lines = [f"# Drill {run['id']}: {run['target']} ({run['state']})", "",
             f"- Asked by: {run['trigger']}",
             f"- Started: {_when(run['started_at'])}; finished: {_when(run['finished_at'])}", "",
             "## Summary", "", "```", columns(scenario_rows(run)), "```"]
    for s in run["scenarios"]:
        scenario = SCENARIOS.get(s["scenario"])
        lines += ["", f"## {s['scenario']}: {s['result']}", "",
                  f"- Fault: {scenario.what if scenario else s['scenario']}: "
                  f"{s['injected'] or 'not injected'}",
                  f"- Onset (injection): {_when(s['onset'])}",
                  f"- Incident: {s['incident'] or '-'}"
                  + (f" (`rollbackctl show {s['incident']} --report`), detected as "
                     f"{s['detected_as']}" if s["incident"] else "")]
        if s.get("backups"):
            lines.append(f"- Fresh backups before the fault: {'; '.join(s['backups'])}")
        if s.get("reason"):
            lines.append(f"- Why not passed: {s['reason']}")
        t = s.get("timings") or {}
        if t:
            lines += ["", "| phase | after onset |", "|---|---|"]
            lines += [f"| {label} | {secs(t[key])} |" for key, label in LABELS if key in t]
        lines += ["", f"- Before: {_state(s.get('before'))}", f"- After: {_state(s.get('after'))}",
                  "- Healthy exactly as before: " + (
                      "-" if s.get("after") is None else "yes" if not s["differences"]
                      else "NO: " + "; ".join(s["differences"]))]
        if s.get("cleanup"):
            lines.append(f"- Cleanup: {s['cleanup']}")
    return redact("\n".join(lines) + "\n")


def write_report(reports_dir: Path, run: DrillRun) -> Path:
    """Markdown and JSON, each replaced atomically; returns the Markdown's path."""
    reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    md = reports_dir / f"drill-{run.id}.md"
    run.report = str(md)
    data = redact_data(run.to_dict())
    for path, text in ((md, render_markdown(data)),
                       (md.with_suffix(".json"), json.dumps(data, indent=2, default=str))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md

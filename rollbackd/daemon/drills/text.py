"""Drills as text: the table rollbackctl, the demo and the reports print. No daemon imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def secs(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


def scenario_rows(run: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("scenario", "incident", "detected after", "rollback start",
                                    "rolled back after", "verified after", "as before", "result")]
    for s in run["scenarios"]:
        t = s.get("timings") or {}
        same = "-" if s.get("after") is None else "yes" if not s.get("differences") else "NO"
        rows.append((s["scenario"], str(s["incident"] or "-"), secs(t.get("detected")),
                     secs(t.get("rollback_started")), secs(t.get("rolled_back")),
                     secs(t.get("verified")), same, s["result"]))
    return rows


def drill_text(run: dict[str, Any]) -> str:
    """One drill: its table, then why anything failed, then where the report is."""
    out = [f"drill {run['id']} on {run['target']} ({run['trigger']}): {run['state']}", "",
           columns(scenario_rows(run))]
    why = [f"- {s['scenario']}: {s['reason']}" for s in run["scenarios"] if s.get("reason")]
    why += [f"- {s['scenario']}: {d}" for s in run["scenarios"] for d in s.get("differences", [])]
    if why:
        out += ["", *why]
    if run.get("report"):
        out += ["", f"report: {run['report']}"]
    return "\n".join(out)


def drills_text(result: dict[str, Any]) -> str:
    """`rollbackctl drills`: each staging target's schedule, then the recent drills."""
    targets = [("TARGET", "SCHEDULE", "LAST SUCCESS", "NEXT DUE", "OVERDUE", "RUNNING")]
    for t in result.get("targets", []):
        targets.append((t["target"], t["schedule"] if t["scheduled"] else f"{t['schedule']} (off)",
                        t["last_success"] or "never", t["next_due"] or "-",
                        "YES" if t["overdue"] else "no", str(t["running"] or "-")))
    runs = [("ID", "TARGET", "STATE", "STARTED (UTC)", "SCENARIOS", "TRIGGER")]
    for r in result.get("drills", []):
        started = (r["started_at"] or "-")[:19].replace("T", " ")
        runs.append((str(r["id"]), r["target"], r["state"], started,
                     " ".join(f"{s['scenario']}:{s['result']}" for s in r["scenarios"]),
                     r["trigger"]))
    parts = [columns(targets) if len(targets) > 1 else "(no target has drills configured)", ""]
    parts.append(columns(runs) if len(runs) > 1 else "(no drills yet)")
    return "\n".join(parts)

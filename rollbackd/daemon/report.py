"""Incident reports: the runbook's documentation after a rollback, as Markdown and JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation.redact import redact, redact_data
from rollbackd.daemon.incidents.changes import lines as change_lines
from rollbackd.daemon.journal import IncidentExtras, Journal
from rollbackd.policies.decision import KEY_DISASTER

log = logging.getLogger("rollbackd.report")

RESPONDER = "_To be completed by the responder._"
TIMINGS = (("onset", "onset (first failing probe)"), ("detected", "detection"),
           ("rollback_started", "rollback start"), ("rolled_back", "rollback done"),
           ("verified", "verification done"), ("closed", "closed"))


def _secs(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a and b else None


def _short(version: str | None) -> str:
    return (version[:12] if version and len(version) == 40 else version) or "-"


def _impact(inc: Any) -> dict[str, Any]:
    probes = inc.evidence.get("probes", {})
    failing = [p for p, e in probes.items() if e.get("failing")] or inc.evidence.get("failing", [])
    start = inc.onset_at or inc.detected_at
    end = inc.verified_at or inc.closed_at
    return {
        "probes": [{"name": p, "status": probes.get(p, {}).get("status"),
                    "detail": probes.get(p, {}).get("detail")} for p in failing],
        "since": start, "until": end, "ongoing": end is None,
        "duration_seconds": _secs(start, end or now_utc()),
    }


def _issues(steps: list[dict[str, Any]], inc: Any) -> list[str]:
    found = [f"step {s['name']} {s['state']}: {s['detail'] or 'no detail'}"
             for s in steps if s["state"] in ("failed", "interrupted")]
    # A step a crash cut off whose effect a restart found there (rollbackd/daemon/incidents/recovery.py).
    found += [f"step {s['name']} was cut off by a crash and {s['detail']}"
              for s in steps if s["state"] == "done"
              and (s["detail"] or "").startswith("found done after restart")]
    if inc.held_reason:
        found.append(f"held for a person: {inc.held_reason}")
    changed = inc.evidence.get("changed_since_detection") or []
    if changed:
        found.append("Between detection and the plan's start (evidence at_execution): "
                     + "; ".join(changed))
    dep = inc.evidence.get("deployment", {})
    if dep.get("branch") not in (None, "(detached)"):
        found.append(f"The branch {dep['branch']} still points at the bad commit; resetting it "
                     "needs a person's authorization.")
    return found


def preventive_measures(r: dict[str, Any]) -> list[str]:
    """Suggestions derived from what happened; people complete and correct them."""
    cls, reason = r["incident_class"], r["reason"]
    plan = r["rollback"].get("plan") or {}
    revision = (plan.get("current") or {}).get("revision")
    bad = _short(r["from_version"] or (plan.get("current") or {}).get("deployment"))
    probes = ", ".join(p["name"] for p in r["details"]["impact"]["probes"]) or "its probes"
    out: list[str] = []
    if cls == "auth_broken":
        what = f"migration {revision}" if revision else f"version {bad}"
        out.append(f"{what} broke login: add a login check (a known-good account signing in "
                   "against a copy of production data) before deploying migrations.")
    elif cls == "app_down" and bad != "-":
        out.append(f"{bad} failed to start or to answer its health check: add a start-up smoke "
                   "test (start the app, call its health endpoint) to the pipeline.")
    elif cls == "app_down":
        out.append("The app went down without a deploy: check resources (memory, disk, file "
                   "handles) and add alerts before they run out.")
    elif cls == "perf_degraded":
        out.append(f"{bad} was slower than the baseline: add a latency gate (a load test "
                   "against the baseline) to the pipeline.")
    elif cls == "data_corruption":
        out.append("The database failed its integrity checks: run integrity checks before and "
                   "after every migration, and rehearse restores (`rollbackctl drill`).")
    elif cls == "key_invalid":
        out.append("The encryption key was unusable: deploy the key from a secret store and "
                   "check that it decrypts a canary before the app starts.")
    elif cls == "dependency_down":
        out.append(f"A dependency failed ({probes}): add redundancy for it, or an alert on it "
                   "that fires before the app does.")
    if KEY_DISASTER in reason:
        out.append("There was no valid backup of the encryption key: back it up now and check "
                   "the backup regularly (the backup_freshness probe).")
    if "no known-good version" in reason:
        out.append("Nothing was known-good to roll back to: let each release run healthy for "
                   "policy.stable_after before the next deploy.")
    if "circuit breaker" in reason:
        out.append("The circuit breaker was open after failed remediations: find why the earlier "
                   "rollbacks failed before `rollbackctl breaker reset`.")
    for s in r["rollback"]["steps"]:
        if s["state"] == "failed":
            out.append(f"The rollback step {s['name']} failed: rehearse this procedure "
                       "(`rollbackctl drill`) and fix it before it is needed again.")
        elif s["state"] == "interrupted":
            out.append(f"The step {s['name']} was interrupted by a daemon stop: avoid restarting "
                       "rollbackd during rollbacks (systemd's TimeoutStopSec covers the grace).")
    if "flapping" in reason:
        out.append("The target flapped: look for a restart loop or an exhausted resource, and "
                   "check the probes' thresholds.")
    return out


def build_report(journal: Journal, incident_id: int) -> dict[str, Any]:
    inc = journal.incidents.get(incident_id)
    if inc is None:
        raise KeyError(incident_id)
    extras = journal.incidents.extras(incident_id) or IncidentExtras()
    steps = [{"name": s.name, "state": s.state, "started_at": s.started_at,
              "duration": s.duration, "detail": s.detail} for s in journal.steps.of(incident_id)]
    timings = {"onset": inc.onset_at, "detected": inc.detected_at,
               "rollback_started": inc.started_at, "rolled_back": inc.rolled_back_at,
               "verified": inc.verified_at, "closed": inc.closed_at}
    report: dict[str, Any] = {
        "id": inc.id, "target": inc.target, "incident_class": inc.incident_class,
        "state": inc.state, "reason": inc.reason,
        "from_version": inc.from_version, "to_version": inc.to_version,
        "timings": timings,
        "durations": {
            "time_to_detect": _secs(inc.onset_at, inc.detected_at),
            "time_to_act": _secs(inc.detected_at, inc.started_at),
            "rollback": _secs(inc.started_at, inc.rolled_back_at),
            "verification": _secs(inc.rolled_back_at, inc.verified_at),
            "time_to_recover": _secs(inc.onset_at or inc.detected_at, inc.verified_at),
        },
        "details": {"what_failed": inc.reason, "detected": inc.detected_at,
                    "impact": _impact(inc)},
        "rollback": {"procedure": extras.plan_kind, "plan": extras.plan,
                     "automatic": extras.automatic, "steps": steps,
                     "issues": _issues(steps, inc)},
        "escalation": {"acknowledged": extras.acked_at, "tier": extras.tier,
                       "paged": extras.paged},
        "what_changed": change_lines(inc.evidence),
        "root_cause": {"evidence": inc.evidence, "analysis": None},
        "held_reason": inc.held_reason,
        "evidence": inc.evidence,
        "steps": steps,
        "timeline": [{"at": at, "event": ev, "detail": d}
                     for at, ev, d in journal.incidents.timeline(incident_id)],
    }
    report["preventive_measures"] = preventive_measures(report)
    return dict(redact_data(report))


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if isinstance(value, datetime) else "-"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ") if value not in (None, "") else "-"


def _timing_rows(r: dict[str, Any]) -> list[str]:
    t, detected = r["timings"], r["timings"]["detected"]
    rows = ["| event | time | since detection |", "|---|---|---|"]
    for key, label in TIMINGS:
        offset = _secs(detected, t[key]) if key != "onset" else None
        rows.append(f"| {label} | {_when(t[key])} | "
                    f"{'-' if offset is None else f'{offset:+.1f}s'} |")
    return rows


def _moves(r: dict[str, Any]) -> list[str]:
    """What each component was rolled back from and to (a commit, a revision, a backup)."""
    plan = r["rollback"]["plan"] or {}
    current = plan.get("current") or {}
    moves = [f"{k}: {_short(current.get(k))} -> {_short(v)}"
             for k, v in (plan.get("targets") or {}).items()]
    if not moves and (r["from_version"] or r["to_version"]):
        moves = [f"deployment: {_short(r['from_version'])} -> {_short(r['to_version'])}"]
    return moves or ["nothing was changed"]


def render_markdown(r: dict[str, Any]) -> str:
    d, rb, esc = r["details"], r["rollback"], r["escalation"]
    impact = d["impact"]
    probes = "; ".join(f"{p['name']} ({p['status']}: {p['detail']})" for p in impact["probes"])
    lasting = impact["duration_seconds"]
    lines = [
        f"# Incident {r['id']}: {r['target']} {r['incident_class']} ({r['state']})", "",
        "## Incident details",
        f"- What failed: {d['what_failed']}",
        f"- Detected: {_when(d['detected'])}",
        f"- Impact: {probes or 'see the evidence'}; "
        + (f"for {lasting:.1f}s" if lasting is not None else "duration unknown")
        + (" so far (ongoing)" if impact["ongoing"] else ""),
        f"- Acknowledged: {_when(esc['acknowledged']) if esc['acknowledged'] else 'no'}"
        + (f"; escalated to tier {esc['tier']}" if (esc["tier"] or 1) > 1 else ""),
        "", "## Timings", *_timing_rows(r), "",
        "## Rollback actions",
        f"- Procedure: {rb['procedure'] or 'none (nothing was run)'}"
        + (" (automatic)" if rb["automatic"] and rb["steps"] else ""),
        *(f"- {move}" for move in _moves(r)),
    ]
    if rb["steps"]:
        lines += ["", "| # | step | result | duration | detail |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {s['name']} | {s['state']} | "
                  + (f"{s['duration']:.2f}s" if s["duration"] is not None else "-")
                  + f" | {_cell(s['detail'])} |" for i, s in enumerate(rb["steps"], 1)]
    lines += ["", "Issues:"] + [f"- {i}" for i in rb["issues"] or ["none"]]
    lines += ["", "## What changed (suspects)",
              *(f"- {c}" for c in r["what_changed"] or ["nothing recorded at detection"])]
    lines += ["", "## Root cause", "Evidence collected:", "", "```json",
              json.dumps(r["root_cause"]["evidence"], indent=2, default=str), "```", "",
              f"Analysis: {RESPONDER}", "", "## Preventive measures"]
    lines += [f"- {m}" for m in r["preventive_measures"]] + [f"- {RESPONDER}", ""]
    lines += ["## Timeline"] + [f"- {_when(e['at'])} {e['event']}: {e['detail']}"
                                for e in r["timeline"]]
    return redact("\n".join(lines) + "\n")


def write_report(journal: Journal, reports_dir: Path, incident_id: int) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = build_report(journal, incident_id)
    md = reports_dir / f"incident-{incident_id}.md"
    for path, text in ((md, render_markdown(report)),
                       (md.with_suffix(".json"), json.dumps(report, indent=2, default=str))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        # 0600 whatever the umask: a report carries the incident's evidence.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return md


async def keep_reports(journal: Journal, reports_dir: Path, interval: float = 5.0) -> None:
    """Rewrite the report of every incident whose timeline moved, so that every incident has
    one, including those that only escalated or recovered by themselves."""
    seen = 0
    while True:
        try:
            for incident_id, last_id, last_at in journal.incidents.timeline_changes(seen):
                md = reports_dir / f"incident-{incident_id}.md"
                if not md.exists() or md.stat().st_mtime < last_at.timestamp():
                    write_report(journal, reports_dir, incident_id)
                seen = max(seen, last_id)
        except Exception:  # a report is not worth the daemon
            log.exception("report status=error reason=unexpected")
        await asyncio.sleep(interval)

"""Incident reports: details, impact, steps with durations, timings, derived measures; no secret."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.report import RESPONDER, build_report, keep_reports, render_markdown, write_report
from rollbackd.policies.decision import KEY_DISASTER

DSN_PASSWORD = "dsn-Pw-0f9a2"
COMMIT_BAD, COMMIT_GOOD = "b" * 40, "a" * 40


def probes(**failing: str) -> dict[str, dict[str, object]]:
    return {p: {"status": "fail", "detail": d, "failing": True, "at": "x"}
            for p, d in failing.items()} | {"health": {"status": "ok", "detail": "200",
                                                       "failing": False, "at": "x"}}


def resolved_auth_incident(journal: Journal) -> int:
    onset = now_utc() - timedelta(seconds=30)
    inc = journal.incidents.open(
        "grading", "auth_broken", "auth_broken: login 500; downgrading the schema 3f2a -> 9c1b",
        onset, {"probes": probes(login=f"500 from postgresql://app:{DSN_PASSWORD}@db/app")})
    plan = {"kind": "database_rollback", "incident_class": "auth_broken", "steps": [],
            "targets": {"revision": "9c1b"}, "current": {"revision": "3f2a"}}
    journal.incidents.update(inc, "planned", "alembic_downgrade", plan=json.dumps(plan),
                             plan_kind="database_rollback")
    journal.incidents.update(inc, state="remediating", started_at=now_utc())
    for seq, (name, ok, detail) in enumerate([("capture_evidence", True, "2 probes"),
                                              ("alembic_downgrade", True, "3f2a -> 9c1b"),
                                              ("verify", True, "all 3 probes pass")]):
        step = journal.steps.started(inc, seq, name, True)
        journal.steps.finished(step, ok, 0.25 * (seq + 1), detail)
    journal.incidents.update(inc, "rolled_back", "9c1b", rolled_back_at=now_utc())
    journal.incidents.update(inc, state="verifying")
    journal.incidents.update(inc, "verified", "all probes pass", state="resolved",
                             verified_at=now_utc(), closed_at=now_utc())
    return inc


def test_report_has_the_runbooks_sections(journal: Journal, tmp_path: Path) -> None:
    inc = resolved_auth_incident(journal)
    r = build_report(journal, inc)
    assert set(r["timings"]) == {"onset", "detected", "rollback_started", "rolled_back",
                                 "verified", "closed"}
    assert all(r["timings"].values())
    assert r["durations"]["time_to_detect"] >= 29
    impact = r["details"]["impact"]
    assert [p["name"] for p in impact["probes"]] == ["login"]
    assert impact["duration_seconds"] >= 30 and not impact["ongoing"]
    assert r["rollback"]["procedure"] == "database_rollback"
    assert [(s["name"], s["duration"]) for s in r["rollback"]["steps"]] == [
        ("capture_evidence", 0.25), ("alembic_downgrade", 0.5), ("verify", 0.75)]
    assert r["rollback"]["issues"] == []
    assert r["preventive_measures"][0].startswith(
        "migration 3f2a broke login: add a login check")
    md = render_markdown(r)
    for heading in ("## Incident details", "## Timings", "## Rollback actions",
                    "## Root cause", "## Preventive measures", "## Timeline"):
        assert heading in md
    for label in ("onset", "detection", "rollback start", "rollback done", "verification done"):
        assert f"| {label}" in md
    assert "| 2 | alembic_downgrade | done | 0.50s | 3f2a -> 9c1b |" in md
    assert md.count(RESPONDER) == 2  # the root cause and the measures, for people to complete
    path = write_report(journal, tmp_path / "reports", inc)
    on_disk = path.read_text() + path.with_suffix(".json").read_text()
    assert DSN_PASSWORD not in on_disk and DSN_PASSWORD not in md
    assert "postgresql://app:***@db/app" in on_disk
    assert json.loads(path.with_suffix(".json").read_text())["id"] == inc


def test_measures_follow_from_what_happened(journal: Journal) -> None:
    inc = journal.incidents.open("web", "app_down", "app_down: health cannot connect; rolling "
                                 "back", None, {"probes": probes(health2="connect refused"),
                                                "deployment": {"branch": "main"}})
    journal.incidents.update(inc, state="remediating", from_version=COMMIT_BAD,
                             to_version=COMMIT_GOOD, plan_kind="deployment_rollback")
    step = journal.steps.started(inc, 0, "git_checkout", False)
    journal.steps.finished(step, False, 1.5, "fatal: reference is not a tree")
    journal.incidents.update(inc, "failed", "step git_checkout failed", state="failed")
    r = build_report(journal, inc)
    measures = " ".join(r["preventive_measures"])
    assert f"{COMMIT_BAD[:12]} failed to start" in measures and "smoke test" in measures
    assert "git_checkout failed: rehearse" in measures
    assert any("still points at the bad commit" in i for i in r["rollback"]["issues"])
    assert "step git_checkout failed: fatal: reference is not a tree" in r["rollback"]["issues"]
    assert r["details"]["impact"]["ongoing"]

    key = journal.incidents.open("web", "key_invalid", f"key_invalid: bad; {KEY_DISASTER}: "
                                 "escalating", None, {}, state="escalated")
    assert any("back it up now" in m for m in build_report(journal, key)["preventive_measures"])


async def test_every_incident_gets_a_report_kept_current(journal: Journal, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    inc = journal.incidents.open("web", "dependency_down", "redis down", None, {},
                                 state="escalated")
    task = asyncio.create_task(keep_reports(journal, reports, interval=0.05))
    try:
        md = reports / f"incident-{inc}.md"
        for _ in range(100):
            if md.exists():
                break
            await asyncio.sleep(0.02)
        assert "(escalated)" in md.read_text()
        journal.incidents.update(inc, "acked", "acknowledged", acked_at=now_utc())
        for _ in range(100):
            if "Acknowledged: 20" in md.read_text():
                break
            await asyncio.sleep(0.02)
        assert "Acknowledged: 20" in md.read_text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""Each drill scenario on real parts: the sample app from git, its SQLite file, its Fernet key,
a real daemon process; the drill breaks the target, the daemon repairs it, the drill checks."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollbackd.daemon.demo.workspace import Workspace
from tests.drills.conftest import Staging

pytestmark = pytest.mark.e2e

CLASSES = {"app_down", "auth_broken", "data_corruption", "perf_degraded", "key_invalid"}


def passed(run: dict[str, Any], scenario: str, staging: Staging) -> dict[str, Any]:
    """The scenario passed, its timings are in order, and the target is as it was."""
    assert run["state"] == "passed", (run.get("scenarios"), staging.d.log_text()[-4000:])
    (s,) = [s for s in run["scenarios"] if s["scenario"] == scenario]
    assert s["result"] == "passed" and s["detected_as"] == scenario, s
    t = s["timings"]
    order = [t["detected"], t["rollback_started"], t["rolled_back"], t["verified"]]
    assert 0 < order[0] and order == sorted(order), t
    assert s["differences"] == [] and s["before"]["rows"] == s["after"]["rows"]
    assert s["after"]["login"] == "ok" and s["after"]["version"] == s["before"]["version"]
    assert s["before"]["rows"]["grades"] == 40
    return dict(s)


def report(staging: Staging, run: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    md = Path(run["report"])
    assert md.parent == staging.d.state_dir / "reports" and md.name == f"drill-{run['id']}.md"
    return md.read_text(), json.loads(md.with_suffix(".json").read_text())


def scrape(staging: Staging) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{staging.metrics_port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_app_down_drill_by_rollbackctl_passes_with_report_and_metrics(staging: Staging) -> None:
    ws, d = staging.ws, staging.d
    good, branch_tip = ws.head(), ws.git("rev-parse", "main")
    res = subprocess.run([sys.executable, "-m", "rollbackd.daemon.control.ctl", "--socket", str(d.socket),
                          "drill", "grading", "--scenario", "app_down"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.stdout, res.stderr, d.log_text()[-3000:])
    assert "app_down" in res.stdout and "passed" in res.stdout and "report:" in res.stdout
    run = d.result("drills", id=1)
    s = passed(run, "app_down", staging)
    # Exactly as before: the same commit, and the branch checked out again, untouched.
    assert ws.head() == good and ws.git("rev-parse", "main") == branch_tip
    assert ws.git("symbolic-ref", "--short", "HEAD") == "main"
    assert httpx.get(f"{ws.url}/health", timeout=5).status_code == 200

    markdown, data = report(staging, run)
    assert data["scenarios"][0]["timings"] == s["timings"]
    for phrase in ("# Drill 1: grading (passed)", "| detection |", "| rollback start |",
                   "| rollback done |", "| verification done |",
                   "Healthy exactly as before: yes", "checked out again"):
        assert phrase in markdown, markdown
    show = d.result("show", id=s["incident"])
    assert "drill" in [e["event"] for e in show["timeline"]]

    m = scrape(staging)
    # The drill's incident and rollback are counted as the drill's, never as production ones.
    opened = {k[1]: v for k, v in m.items() if k[0] == "rollbackd_incidents_total"}
    assert opened == {(("incident_class", "app_down"), ("target", "grading"),
                       ("trigger", "drill")): 1.0}, opened
    rolled = {dict(k[1])["trigger"]: v for k, v in m.items()
              if k[0] == "rollbackd_rollbacks_total"}
    assert rolled == {"drill": 1.0}, rolled
    assert m[("rollbackd_drill_last_success_timestamp_seconds", (("target", "grading"),))] > 0
    assert m[("rollbackd_drill_overdue", (("target", "grading"),))] == 0
    assert m[("rollbackd_drill_next_due_timestamp_seconds", (("target", "grading"),))] > 0
    for phase in ("detected", "rollback_started", "rolled_back", "verified"):
        key = ("rollbackd_drill_phase_seconds_count",
               (("phase", phase), ("scenario", "app_down"), ("target", "grading")))
        assert m[key] == 1, phase
    assert m[("rollbackd_drill_scenarios_total", (("result", "passed"), ("scenario", "app_down"),
                                                  ("target", "grading")))] == 1
    # The drill's rollback used up no automatic rollback and no cooldown.
    with closing(d.db()) as db:
        assert db.execute("SELECT automatic FROM incidents WHERE id = ?",
                          (s["incident"],)).fetchone()[0] == 0
    listed = d.result("drills")
    assert listed["targets"][0]["target"] == "grading" and not listed["targets"][0]["overdue"]
    assert [r["id"] for r in listed["drills"]] == [1]
    res = subprocess.run([sys.executable, "-m", "rollbackd.daemon.control.ctl", "--socket", str(d.socket),
                          "drills"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    for phrase in ("grading", "0 3 1 */3 *", "app_down:passed", "UTC"):
        assert phrase in res.stdout, res.stdout


def test_auth_broken_drill_downgrades_the_bad_migration(staging: Staging) -> None:
    run = staging.drill("auth_broken")
    s = passed(run, "auth_broken", staging)
    assert "approved" in s["timings"]  # the downgrade is destructive: the drill approved it
    show = staging.d.result("show", id=s["incident"])
    assert [x["name"] for x in show["steps"]][-4:] == ["snapshot_database", "alembic_downgrade",
                                                        "check_revision", "verify"]
    assert s["after"]["revision"] == s["before"]["revision"] == "0003"
    versions = staging.ws.app_dir / "migrations" / "versions"
    assert sorted(p.name for p in versions.glob("*.py")) == [
        "0001_users.py", "0002_audit.py", "0003_account_expiry.py"]  # the drill's is gone


def test_key_invalid_drill_restores_the_key(staging: Staging) -> None:
    good = staging.ws.env()["DB_ENCRYPTION_KEY"]
    run = staging.drill("key_invalid")
    s = passed(run, "key_invalid", staging)
    assert staging.ws.env()["DB_ENCRYPTION_KEY"] == good
    assert s["after"]["key"] == s["before"]["key"]
    markdown, data = report(staging, run)
    assert good not in markdown and good not in json.dumps(data)  # fingerprints only


def test_data_corruption_drill_restores_the_fresh_backup(staging: Staging) -> None:
    run = staging.drill("data_corruption")
    s = passed(run, "data_corruption", staging)
    assert s["backups"] and "verified" in s["backups"][0]
    assert "ix_grades_user_id" in s["injected"]
    show = staging.d.result("show", id=s["incident"])
    assert "swap_database" in [x["name"] for x in show["steps"]]
    kept = list(staging.ws.db_path.parent.glob("grading.db.corrupted.*"))
    assert kept, "the damaged file is kept as evidence"


def test_perf_degraded_drill_rolls_the_slow_version_back(staging: Staging) -> None:
    good = staging.ws.head()
    run = staging.drill("perf_degraded")
    passed(run, "perf_degraded", staging)
    assert staging.ws.head() == good


def test_argv_injector_drops_a_table_and_the_restore_brings_it_back(
        start_staging: Any, workspace: Workspace, tmp_path: Path) -> None:
    seen = tmp_path / "injector-env"
    script = ("import os, sqlite3, sys; "
              "open(sys.argv[2], 'w').write(os.environ['ROLLBACKD_DRILL_SCENARIO']); "
              "db = sqlite3.connect(sys.argv[1]); db.execute('DROP TABLE grades'); db.commit()")
    argv = [sys.executable, "-c", script, str(workspace.db_path), str(seen)]
    injector = "{ argv = [" + ", ".join(json.dumps(a) for a in argv) + "] }"
    staging = start_staging(injectors={"data_corruption": injector})
    run = staging.drill("data_corruption")
    s = passed(run, "data_corruption", staging)
    assert seen.read_text() == "data_corruption"
    assert s["after"]["rows"]["grades"] == 40

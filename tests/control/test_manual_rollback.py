"""Manual rollbacks on real parts: planned by the policies, gated by the limits unless forced."""

from __future__ import annotations

import json
from contextlib import closing

import httpx
import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.control.conftest import audit_rows, ok_json, rollbackctl

pytestmark = pytest.mark.e2e


def incident_row(d: DaemonProcess, incident_id: int) -> dict:
    with closing(d.db()) as db:
        return dict(db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone())


def test_over_the_limit_needs_force_and_force_is_recorded(
        workspace: Workspace, smtp: SmtpSink, start_daemon) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port, targets_extra="\n[targets.grading.policy]\n"
                                    "max_rollbacks = 0\n"))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")
    bad = ws.deploy_broken()
    inc = wait_for(lambda: [i for i in ok_json(d, "incidents") if i["state"] == "escalated"],
                   20, "the automatic rollback refused by the limit")[0]
    assert "(limit 0): not rolling back" in inc["reason"]

    dry = rollbackctl(d, "rollback", "grading", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"rolling back to {good[:7]}" in dry.stdout
    assert "needs --force: 0 automatic rollbacks" in dry.stdout
    refused = rollbackctl(d, "rollback", "grading")
    assert refused.returncode == 1
    assert "needs_force" in refused.stderr and "(limit 0)" in refused.stderr
    assert ws.head() == bad and ok_json(d, "show", str(inc["id"]))["steps"] == []

    forced = rollbackctl(d, "rollback", "grading", "--force", "--wait")
    assert forced.returncode == 0, (forced.stdout, forced.stderr)
    assert ws.head() == good
    assert httpx.get(f"{ws.url}/health", timeout=5).status_code == 200

    # The escalated incident was taken over: one incident, manual, with the force on record.
    show = ok_json(d, "show", str(inc["id"]))
    assert show["state"] == "resolved"
    assert [s["name"] for s in show["steps"]][0] == "capture_evidence"  # the checklist ran
    assert [s["name"] for s in show["steps"]][-1] == "verify"
    assert all(s["state"] == "done" for s in show["steps"])
    events = {e["event"]: e["detail"] for e in show["timeline"]}
    assert "forced" in events and "(limit 0)" in events["forced"]
    assert events["manual"].startswith("manual rollback by uid")
    assert "forced past:" in show["reason"]
    row = incident_row(d, inc["id"])
    assert row["automatic"] == 0 and row["to_version"] == good
    (audited,) = [r for r in audit_rows(d) if r["cmd"] == "rollback" and r["outcome"] == "ok"
                  and json.loads(r["args"]).get("force")]
    assert json.loads(audited["args"]) == {"target": "grading", "force": True, "dry_run": False}
    assert [r["outcome"] for r in audit_rows(d) if r["cmd"] == "rollback"] == \
        ["ok", "error:needs_force", "ok"]
    assert [e["state"] for e in ok_json(d, "known-good", "list", "grading")
            if e["version"] == bad] == ["bad"]


def test_rollback_to_a_named_version_of_a_healthy_target(
        workspace: Workspace, smtp: SmtpSink, start_daemon) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    v1 = ws.head()
    wait_for(lambda: known_good(d, v1), 20, "v1 known-good")
    (ws.app_dir / "NOTES.md").write_text("v2: a harmless change\n")
    ws.git("add", "NOTES.md")
    ws.git("commit", "-q", "-m", "v2: notes")
    ws.restart()
    v2 = ws.head()
    wait_for(lambda: known_good(d, v2), 20, "v2 known-good")

    unknown = rollbackctl(d, "rollback", "grading", "--to", "0000000")
    assert unknown.returncode == 1 and "not in the ledger" in unknown.stderr
    assert rollbackctl(d, "rollback", "grading", "--to").returncode == 2

    dry = ok_json(d, "rollback", "grading", "--to", v1[:8], "--dry-run")
    assert (dry["dry_run"], dry["gate"], dry["to"], dry["from"]) == \
        (True, None, {"deployment": v1}, v2)
    assert ws.head() == v2 and ok_json(d, "incidents") == []

    out = rollbackctl(d, "--json", "rollback", "grading", "--to", v1[:8], "--wait")
    assert out.returncode == 0, (out.stdout, out.stderr)
    shown = json.loads(out.stdout)
    assert shown["state"] == "resolved" and shown["to_version"] == v1
    assert ws.head() == v1
    assert incident_row(d, shown["id"])["automatic"] == 0
    states = {e["version"]: e["state"] for e in ok_json(d, "known-good", "list", "grading")}
    assert states == {v1: "known-good", v2: "bad"}

    # A version marked bad is no rollback target, with or without --force.
    for extra in ([], ["--force"]):
        out = rollbackctl(d, "rollback", "grading", "--to", v2, *extra)
        assert out.returncode == 1 and "not_known_good" in out.stderr, out.stderr
    # A manual rollback is not an automatic one: the limits still allow automatic rollbacks.
    with closing(d.db()) as db:
        assert db.execute("SELECT COUNT(*) FROM incidents WHERE automatic = 1").fetchone()[0] == 0

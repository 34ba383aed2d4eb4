"""The whole loop on real parts: sample app process, git repo, SMTP server, daemon process."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import httpx
import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e


def resolved(d: DaemonProcess) -> dict | None:
    incidents = d.result("incidents")
    return incidents[0] if incidents and incidents[0]["state"] == "resolved" else None


def test_broken_deploy_is_detected_rolled_back_and_verified(
    workspace: Workspace, smtp: SmtpSink, start_daemon
) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")

    bad = ws.deploy_broken()
    inc = wait_for(lambda: resolved(d), 45, f"incident resolved\n{d.log_text()}")

    # The app runs the known-good commit again, checked out detached; the branch is untouched.
    assert httpx.get(f"{ws.url}/health", timeout=5).status_code == 200
    assert ws.head() == good
    assert ws.git("rev-parse", "main") == bad

    show = d.result("show", id=inc["id"])
    assert show["incident_class"] == "app_down"
    assert (show["from_version"], show["to_version"]) == (bad, good)
    events = [e["event"] for e in show["timeline"]]
    for earlier, later in [("detected", "started"), ("started", "rolled_back"),
                           ("rolled_back", "verified")]:
        assert events.index(earlier) < events.index(later), events
    steps = [(s["name"], s["state"]) for s in show["steps"]]
    assert steps == [(name, "done") for name in (
        "capture_evidence", "notify", "backup_current", "record_incident", "verify_target",
        "git_checkout", "install_dependencies", "restart_service", "verify")]
    assert show["evidence"]["deployment"]["commit"] == bad
    assert show["evidence"]["deployment"]["branch"] == "main"

    # The bad version is marked bad in the ledger, and the report says who may move the branch.
    with closing(d.db()) as db:
        bad_at = db.execute("SELECT bad_at FROM ledger WHERE version = ?", (bad,)).fetchone()[0]
    assert bad_at
    report = Path(d.state_dir / "reports" / f"incident-{inc['id']}.md").read_text()
    assert "still points at the bad commit" in report

    # People heard about it in one thread: opened, then resolved.
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")
    (to_open, opened), (_, done) = smtp.messages[:2]
    assert "deployment_rollback" in str(opened["Subject"]) and "resolved" in str(done["Subject"])
    assert sorted(to_open) == ["devops-lead@example.com", "oncall@example.com"]
    assert done["In-Reply-To"] == opened["Message-ID"]


def test_escalates_without_acting_when_nothing_is_known_good(
    workspace: Workspace, smtp: SmtpSink, start_daemon
) -> None:
    ws = workspace
    # The app never starts, so no version ever becomes known-good: nothing to roll back to.
    ws.deploy_broken()
    d = start_daemon(ws.config_toml(smtp.port))
    head = ws.head()
    inc = wait_for(lambda: d.result("incidents"), 20, "incident")[0]
    assert inc["state"] == "escalated"
    assert "no known-good version" in inc["reason"]
    wait_for(lambda: smtp.messages, 15, "escalation mail")
    assert "escalated" in smtp.subjects[0]
    assert ws.head() == head
    show = d.result("show", id=inc["id"])
    assert show["steps"] == []

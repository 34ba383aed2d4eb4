"""A local hotfix in the deployment's work tree, with the daemon, the sample app and git for real."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e


def test_hotfix_holds_the_rollback_until_a_person_decides(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, "v1 known-good")

    (ws.app_dir / "hotfix.txt").write_text("applied by hand at 3 a.m.\n")
    bad = ws.deploy_broken()
    inc = wait_for(lambda: (i := d.result("incidents")) and i[0]["state"] == "held" and i[0],
                   40, f"incident held\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert [(s["name"], s["state"]) for s in show["steps"]][-1] == ("git_checkout", "failed")
    assert show["steps"][-1]["detail"].startswith(
        f"local changes in {ws.app_dir}: ?? hotfix.txt; checking out {good[:12]}")
    assert ws.head() == bad and (ws.app_dir / "hotfix.txt").exists()  # nothing changed
    assert d.result("breaker") == []  # a hold is not a failed remediation
    wait_for(lambda: any("HELD for a person" in s for s in smtp.subjects), 15, "held mail")
    assert not any("ROLLBACK FAILED" in s for s in smtp.subjects)

    # A person keeps the hotfix elsewhere and lets the plan go on.
    (ws.app_dir / "hotfix.txt").unlink()
    assert d.ctl("approve", id=inc["id"])["ok"]
    wait_for(lambda: d.result("incidents")[0]["state"] == "resolved", 45,
             f"resolved\n{d.log_text()}")
    assert ws.head() == good


def test_a_dirty_work_tree_never_becomes_known_good(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    ws.start()
    (ws.app_dir / "app.py").write_text((ws.app_dir / "app.py").read_text() + "# hotfix\n")
    d = start_daemon(ws.config_toml(smtp.port))
    head = ws.head()
    wait_for(lambda: d.result("status")["targets"][0]["probes"]["health"] == "passing", 20,
             "health passing")
    time.sleep(5)  # stable_after is 2 s: a clean tree would be known-good by now
    with closing(d.db()) as db:
        rows = db.execute("SELECT version, known_good_at FROM ledger").fetchall()
    assert [tuple(r) for r in rows] == [(head, None)]

    ws.git("checkout", "--", "app.py")  # the edit is undone: the commit is the release again
    wait_for(lambda: known_good(d, head), 20, f"known-good once clean\n{d.log_text()}")

"""Operator overrides against a running daemon: pause holds every action, resume lets it act."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import closing

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e


def ctl(d, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollbackd.daemon.control.ctl", "--socket", str(d.socket),
                           *argv], capture_output=True, text=True, timeout=30)


def test_pause_then_resume(workspace: Workspace, smtp: SmtpSink, start_daemon) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")

    assert ctl(d, "pause", "grading", "--for", "10m").returncode == 2  # --reason is required
    res = ctl(d, "pause", "grading", "--for", "10m", "--reason", "migrating the database")
    assert res.returncode == 0, res.stderr
    bad = ws.deploy_broken()
    wait_for(lambda: d.result("status")["targets"][0]["probes"]["health"] == "failing", 15,
             "the failure is seen")
    time.sleep(2)
    assert d.result("incidents") == []  # observed, not acted on
    assert ws.head() == bad
    assert "paused" in d.log_text() or "pause until" in d.log_text()

    assert ctl(d, "resume", "grading").returncode == 0
    inc = wait_for(lambda: [i for i in d.result("incidents") if i["state"] == "resolved"], 45,
                   "rollback after resume")[0]
    assert inc["class"] == "app_down"
    assert ws.head() == good
    with closing(d.db()) as db:
        cmds = [r[0] for r in db.execute("SELECT cmd FROM audit ORDER BY id")]
    assert "pause" in cmds and "resume" in cmds

"""git + service: the known-good commit is gone from the repository; one escalation, no loop.

(The successful git rollback end to end is tests/e2e/test_rollback_loop.py.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rollbackd.daemon.demo.workspace import BROKEN_PATCH, Workspace
from tests.conftest import SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e


def test_known_good_commit_gone_ends_in_one_escalation(
    workspace: Workspace, smtp: SmtpSink, start_daemon: Any
) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")

    # History rewritten and garbage-collected: the broken version replaces v1, which is gone.
    app = ws.app_dir / "app.py"
    head, sep, rest = app.read_text().partition("from __future__ import annotations\n")
    app.write_text(head + sep + BROKEN_PATCH + rest)
    ws.git("commit", "-q", "-a", "--amend", "-m", "v1 (amended): load grading_settings")
    ws.git("reflog", "expire", "--expire=now", "--all")
    ws.git("gc", "-q", "--prune=now")
    bad = ws.head()
    assert ws.git("cat-file", "-t", bad) == "commit"
    ws.restart()

    inc = wait_for(lambda: (i := d.result("incidents")) and i[0]["state"] == "escalated" and i[0],
                   40, f"incident escalated\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    steps = [(s["name"], s["state"]) for s in show["steps"]]
    assert steps[-1] == ("verify_target", "failed"), steps
    assert f"rollback target {good[:12]} is not in the repository" in show["steps"][-1]["detail"]
    events = [e["event"] for e in show["timeline"]]
    assert events.index("failed") < events.index("escalated")
    assert [b["failures"] for b in d.result("breaker") if b["target"] == "grading"] == [1]
    assert ws.head() == bad  # nothing was checked out
    time.sleep(3)
    assert len(d.result("incidents")) == 1
    wait_for(lambda: any("ROLLBACK FAILED" in s for s in smtp.subjects), 15, "failure mail")

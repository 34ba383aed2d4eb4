"""kill -9 of the daemon as it ends an incident: the end is written, not committed.

ROLLBACKD_CRASH_AT_CLOSE=<resolved|held|failed> (with `daemon.test_hooks`) SIGKILLs the daemon
right after it wrote the incident's end, inside the transaction that also journals the ledger's
bad mark and the breaker and queues the end's mail. The journal keeps none of it: the incident
is still verifying (every step done) or remediating (its last step journaled failed), and no
mail of the end is queued. The restart ends it: every step done -> resolved; the last step
failed -> held (a failure the crash cut off is held, as the restart cannot tell it from a hold).
Then:

- the incident is in that state, and every step is journaled once (done, or the failed one
  failed), none run again (the service restart counted by a wrapper);
- every recipient received the end's mail exactly once, counted at the real SMTP server, and the
  incident's mails are exactly one "opened" and one of the end: no event has a second Message-ID;
- every mail the journal queued reached the server once per recipient, and a clean stop sends
  nothing again;
- the journal passes PRAGMA integrity_check.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.recovery.support import wait_healthy
from tests.reliability.kill9 import (
    CHECKLIST,
    GIT_STEPS,
    SIGKILLED,
    crash_next,
    daemon_for,
    last_step,
    mail_events,
    restart,
)
from tests.reliability.support import (
    assert_no_mail_lost,
    counted,
    delivered,
    integrity_ok,
    journal_rows,
    runs,
    step_counts,
    unsent,
    wait_exit,
)

pytestmark = pytest.mark.e2e

CASES = {
    # outcome: (the state the restart leaves, the end's mail, the steps journaled, restarts run)
    "resolved": ("resolved", "resolved", GIT_STEPS, 1),
    "held": ("held", "held", [*CHECKLIST, "git_checkout"], 0),
    "failed": ("held", "held", GIT_STEPS[:-1], 1),
}


def open_incident(d: DaemonProcess) -> dict[str, object]:
    return dict(journal_rows(d, "SELECT id, state, held_reason FROM incidents "
                                "WHERE plan_kind IS NOT NULL ORDER BY id DESC LIMIT 1")[0])


@pytest.mark.parametrize("outcome", list(CASES))
def test_a_kill_before_the_end_commits_ends_the_incident_once_on_restart(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, outcome: str) -> None:
    ws = workspace
    state, end_mail, steps, restarts_run = CASES[outcome]
    restarts = tmp_path / "restarts"
    argv = ws.restart_argv() if outcome != "failed" else [sys.executable, "-c",
                                                          "raise SystemExit(3)"]
    ws.start()
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          restart_argv=counted(argv, restarts))
    d = daemon_for(tmp_path, text, "close", outcome).start()
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 20, "v1 known-good")
        if outcome == "held":  # a hotfix in the work tree: git_checkout holds the plan
            (ws.app_dir / "hotfix.txt").write_text("applied by hand at 3 a.m.\n")
        bad = ws.deploy_broken()
        assert wait_exit(d, 60, f"the kill at close {outcome}\n{d.log_text()[-3000:]}") \
            == SIGKILLED

        # Dead inside the end's transaction: neither the end nor its mail is in the journal.
        inc = open_incident(d)
        incident_id = int(inc["id"])  # type: ignore[call-overload]
        assert inc["state"] == ("verifying" if outcome == "resolved" else "remediating")
        _, name, step_state = last_step(d)
        assert (name, step_state) == (steps[-1], "done" if outcome == "resolved" else "failed")
        assert end_mail not in mail_events(d, incident_id)
        assert integrity_ok(d)

        crash_next(d, "close", None)
        restart(d)
        wait_for(lambda: open_incident(d)["state"] == state, 30,
                 f"{state} after the restart\n{d.log_text()[-3000:]}")
        wait_for(lambda: mail_events(d, incident_id)[end_mail] and not unsent(d), 30,
                 f"the {end_mail} mail sent\n{d.log_text()[-3000:]}")

        # Each step journaled once, none run again.
        counts = step_counts(d, incident_id)
        assert list(counts) == steps
        assert all(counts[s] == Counter({"done": 1}) for s in steps[:-1]), counts
        assert counts[steps[-1]] == Counter({"done" if outcome == "resolved" else "failed": 1})
        assert runs(restarts) == restarts_run
        assert ws.head() == (bad if outcome == "held" else good)
        if outcome == "resolved":
            wait_healthy(ws)
        else:
            held_reason = str(open_incident(d)["held_reason"])
            assert held_reason.startswith(f"step {steps[-1]} failed: "), held_reason

        # The end's mail: one Message-ID, at the server once per recipient.
        assert mail_events(d, incident_id) == {"opened": 1, end_mail: 1}
        (row,) = journal_rows(d, "SELECT message_id, recipients FROM outbox WHERE "
                                 "incident_id = ? AND message_id LIKE ?", incident_id,
                              f"<rollbackd.{incident_id}.{end_mail}%")
        end_id = str(row["message_id"])
        at_server = {k: n for k, n in delivered(smtp).items() if k[1] == end_id}
        recipients = json.loads(row["recipients"])
        assert recipients and at_server == {(rcpt, end_id): 1 for rcpt in recipients}
        assert_no_mail_lost(d, smtp)
        assert integrity_ok(d)
        assert d.stop() == 0
        assert_no_mail_lost(d, smtp)  # a clean stop sends nothing again
        assert integrity_ok(d)
    finally:
        d.stop()


def test_a_kill_between_two_steps_goes_on_by_itself_once_on_restart(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path) -> None:
    """Killed after git_checkout is journaled done and before install_dependencies starts (an
    automatic plan, nothing destructive left): the restart goes on from the next step, runs no
    step twice and resolves the incident with one resolved mail."""
    ws = workspace
    restarts = tmp_path / "restarts"
    ws.start()
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          restart_argv=counted(ws.restart_argv(), restarts))
    d = daemon_for(tmp_path, text, "between", "git_checkout").start()
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 20, "v1 known-good")
        ws.deploy_broken()
        assert wait_exit(d, 60, f"the kill after git_checkout\n{d.log_text()[-3000:]}") \
            == SIGKILLED
        inc = open_incident(d)
        incident_id = int(inc["id"])  # type: ignore[call-overload]
        assert inc["state"] == "remediating"
        assert last_step(d)[1:] == ("git_checkout", "done")
        assert ws.head() == good  # checked out, not yet restarted
        assert runs(restarts) == 0

        crash_next(d, "between", None)
        restart(d)
        wait_for(lambda: open_incident(d)["state"] == "resolved", 60,
                 f"resolved after the restart\n{d.log_text()[-3000:]}")
        wait_for(lambda: mail_events(d, incident_id)["resolved"] and not unsent(d), 30,
                 f"the resolved mail sent\n{d.log_text()[-3000:]}")
        counts = step_counts(d, incident_id)
        assert list(counts) == GIT_STEPS
        assert all(c == Counter({"done": 1}) for c in counts.values()), counts
        assert runs(restarts) == 1
        wait_healthy(ws)
        assert mail_events(d, incident_id) == {"opened": 1, "resolved": 1}
        assert_no_mail_lost(d, smtp)
        assert integrity_ok(d)
        assert d.stop() == 0
        assert_no_mail_lost(d, smtp)
    finally:
        d.stop()

"""The kill -9 walk: crash the daemon at one point of each step of a plan, restart it on the same
state directory, and check what the restart did (tests/reliability/test_kill9_*.py).

The fault hook (`daemon.test_hooks = true`) SIGKILLs the daemon at one of two points of a step:
ROLLBACKD_CRASH_AT_STEP=<step> right after it journaled <step> as running and before the step
does anything; ROLLBACKD_CRASH_AFTER_STEP=<step> right after the step did its work and before it
is journaled done; and ROLLBACKD_CRASH_AT_CLOSE=<resolved|held|failed> right after the incident's
end is written, before it commits with its mail. `walk` runs one chain of such crashes over a plan's
steps; `assert_survived` checks the journal, the steps and the mail once the plan finished.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rollbackd.daemon.control.ctl import Unreachable
from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, wait_for
from tests.recovery.support import db_path, migrate_argv, service_argv
from tests.reliability.support import (
    assert_no_mail_lost,
    counted,
    integrity_ok,
    journal_rows,
    step_counts,
    toml_argv,
    unsent,
    wait_exit,
)

POINTS = {"at": "ROLLBACKD_CRASH_AT_STEP", "after": "ROLLBACKD_CRASH_AFTER_STEP"}
CLOSE = {"close": "ROLLBACKD_CRASH_AT_CLOSE"}
"""Not a step's point: the incident's end (resolved, held, failed) is written, not committed
(test_kill9_close.py)."""
BETWEEN = {"between": "ROLLBACKD_CRASH_BETWEEN_STEPS"}
"""After the named step is journaled done, before the next one starts (test_kill9_close.py)."""
SIGKILLED = -9
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]
GIT_STEPS = [*CHECKLIST, "git_checkout", "install_dependencies", "restart_service", "verify"]
"""The git + service deployment rollback's steps, in order."""
both_points = pytest.mark.parametrize("point", list(POINTS))


def daemon_for(tmp_path: Path, text: str, point: str, first: str) -> DaemonProcess:
    from rollbackd.daemon.config import load_config

    config = tmp_path / "rollbackd.toml"
    config.write_text(text)
    cfg = load_config(config)
    d = DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir, tmp_path / "daemon.log")
    crash_next(d, point, first)
    return d


def crash_next(d: DaemonProcess, point: str, step: str | None) -> None:
    """The next start dies at `step` (None: it does not die); at point "close", `step` is the
    incident's end."""
    crash = {**POINTS, **CLOSE, **BETWEEN}
    for var in crash.values():
        d.env.pop(var, None)
    if step is not None:
        d.env[crash[point]] = step


def restart(d: DaemonProcess) -> None:
    """Start the daemon; a plan that goes on by itself may kill it again before it answers."""
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "rollbackd.daemon.cli", "run", "--config", str(d.config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **d.env})
    proc = d.proc

    def up_or_killed() -> bool:
        if proc.poll() is not None:
            assert proc.returncode == SIGKILLED, f"exited {proc.returncode}\n{d.log_text()}"
            return True
        try:
            return bool(d.ctl("status")["ok"])
        except Exception:  # noqa: BLE001 - still starting
            return False

    wait_for(up_or_killed, 20, f"daemon ready\n{d.log_text()[-3000:]}")


def last_step(d: DaemonProcess) -> tuple[int, str, str]:
    row = journal_rows(d, "SELECT id, name, state FROM steps ORDER BY id DESC LIMIT 1")[0]
    return row["id"], row["name"], row["state"]


def incident_row(d: DaemonProcess) -> dict[str, object]:
    return dict(journal_rows(d, "SELECT id, state, held_reason FROM incidents "
                                "WHERE plan_kind IS NOT NULL ORDER BY id DESC LIMIT 1")[0])


def events(d: DaemonProcess, incident_id: int, event: str) -> int:
    return len(journal_rows(d, "SELECT 1 FROM timeline WHERE incident_id = ? AND event = ?",
                            incident_id, event))


def approve(d: DaemonProcess, incident_id: int) -> None:
    """A person resumes the held incident. The plan may kill the daemon before the reply."""
    try:
        reply = d.ctl("approve", id=incident_id)
    except (Unreachable, OSError, ValueError):
        return
    assert reply["ok"] or d.proc is None or d.proc.poll() is not None, reply


@dataclass
class Walk:
    point: str
    incident: int = 0
    holds: int = 0
    did: list[tuple[str, str]] = field(default_factory=list)
    """(step, what the restart after the crash in it did)."""
    found: list[tuple[str, str]] = field(default_factory=list)
    """(step, the cut-off step's journal detail after the restart: what its check found)."""

    def interrupted(self, step: str) -> int:
        return sum(1 for s, what in self.did if s == step and "found done" not in what)


def walk(d: DaemonProcess, smtp: SmtpSink, point: str, steps: list[str],
         trigger: Callable[[], object],
         seen: Callable[[str], object] = lambda crashed: None) -> Walk:
    """Trigger the fault, then walk the chain of crashes at `point` of each of `steps`.
    `seen(step)` looks at the world while the daemon lies dead in `step`."""
    w = Walk(point)
    trigger()
    assert wait_exit(d, 60, f"the kill {point} {steps[0]}") == SIGKILLED
    for i, crashed in enumerate(steps):
        seen(crashed)
        step_id, name, state = last_step(d)
        assert (name, state) == (crashed, "running")  # the daemon died inside it
        inc = incident_row(d)
        w.incident = w.incident or int(inc["id"])  # type: ignore[call-overload]
        assert inc["id"] == w.incident  # the same incident: no second one opened beside it
        following = steps[i + 1] if i + 1 < len(steps) else None
        crash_next(d, point, following)
        resumed = events(d, w.incident, "resumed")
        restart(d)
        wait_for(lambda r=resumed: incident_row(d)["state"] == "held"  # type: ignore[misc]
                 or events(d, w.incident, "resumed") > r, 30,
                 f"recovery after {point} {crashed}\n{d.log_text()[-3000:]}")
        settled = journal_rows(d, "SELECT state, detail FROM steps WHERE id = ?", step_id)[0]
        found = re.match(r"(found done)|interrupted; effect (\w+)", settled["detail"])
        assert found, settled["detail"]
        what = "found done" if found[1] else f"effect {found[2]}"
        assert settled["state"] == ("done" if found[1] else "interrupted")
        w.found.append((crashed, str(settled["detail"])))
        if events(d, w.incident, "resumed") > resumed:
            w.did.append((crashed, f"{what}, went on by itself"))
        else:
            w.holds += 1
            w.did.append((crashed, f"{what}, held, approved"))
            reason = str(incident_row(d)["held_reason"])
            assert f"step {crashed} was interrupted" in reason
            # The person is told what was found, and the mail is out before they act.
            told = str(settled["detail"]).split(": ", 1)[1]
            assert told in reason, (told, reason)
            wait_for(lambda: sum("HELD" in s for s in smtp.subjects) == w.holds
                     and not unsent(d), 20, f"held mail after {crashed}")
            mail = held_mail(smtp, w.incident, step_id)
            assert f"step {crashed} was found {what.split()[-1].upper()}: {told}" in mail, mail
            approve(d, w.incident)
        if following:
            assert wait_exit(d, 60, f"the kill {point} {following}") == SIGKILLED
    wait_for(lambda: incident_row(d)["state"] == "resolved", 60,
             f"resolved\n{d.log_text()[-3000:]}")
    return w


def held_mail(smtp: SmtpSink, incident_id: int, step_id: int) -> str:
    """The plain text of the held mail about step `step_id` (its Message-ID names the step)."""
    for _, m in smtp.messages:
        if str(m["Message-ID"]).startswith(f"<rollbackd.{incident_id}.held-{step_id}@"):
            return "\n".join(str(p.get_payload(decode=True), "utf-8") for p in m.walk()
                             if p.get_content_type() == "text/plain")
    raise AssertionError(f"no held mail of step {step_id}: {smtp.subjects}")


def mail_events(d: DaemonProcess, incident_id: int) -> Counter[str]:
    rows = journal_rows(d, "SELECT message_id FROM outbox WHERE incident_id = ?", incident_id)
    return Counter(re.sub(r"-\d+$", "", r["message_id"].split(".")[2].split("@")[0])
                   for r in rows)


def assert_survived(d: DaemonProcess, smtp: SmtpSink, w: Walk, steps: list[str],
                    plan: str, done_mail: str = "resolved",
                    also: Mapping[str, int] | None = None) -> None:
    """`also`: the incident's mails before the plan ran (a plan that waited for approval has
    its "opened" mail), beside the acting, held and `done_mail` ones."""
    counts = step_counts(d, w.incident)
    assert list(counts) == steps  # in plan order, nothing else ran
    for name in steps:
        expected = Counter({"done": 1, "interrupted": w.interrupted(name)})
        assert counts[name] == +expected, (name, counts[name], w.did)
    # The runner journals the incident resolved, then queues its mail: wait for the mail.
    wait_for(lambda: mail_events(d, w.incident)[done_mail], 20, f"the {done_mail} mail queued")
    assert_no_mail_lost(d, smtp)
    # One mail that the plan acts: "opened", or "started" when a held mail came first.
    mails = mail_events(d, w.incident)
    acting = "started" if mails["started"] else "opened"
    assert mails == {acting: 1, "held": w.holds, done_mail: 1, **(also or {})}, (mails, w.did)
    assert integrity_ok(d)
    assert d.stop() == 0
    # A clean stop sends nothing again (its last flush raced the sender's once).
    assert_no_mail_lost(d, smtp)
    assert integrity_ok(d)
    table = os.environ.get("ROLLBACKD_KILL9_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(json.dumps({"plan": plan, "point": w.point, "did": w.did,
                                "found": w.found}) + "\n")


# -- the grading app's SQLite data, as the data plans' walks configure it -----------------------

def data_section(ws: Workspace, tmp_path: Path, markers: dict[str, Path], policy: str,
                 key: str = "") -> str:
    # The login probe every second: a login hashes its password (0.5-1 s on a loaded 2-CPU
    # machine), and a run still waiting when the next is due counts as a failure (an overrun).
    password = tmp_path / "probe-password"
    password.write_text(DEMO_USER[1] + "\n")
    return f"""
[targets.grading.probes.integrity]
kind = "sqlite_integrity"
path = "{db_path(ws)}"
interval = "500ms"
timeout = "2s"
failure_threshold = 1
full_check_every = "1s"
required_tables = ["users"]

[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{password}"
interval = "1s"
timeout = "5s"
failure_threshold = 3

[targets.grading.database]
kind = "sqlite"
path = "{db_path(ws)}"
stop = {toml_argv(counted(service_argv(ws, "stop"), markers["stop"]))}
start = {toml_argv(counted(service_argv(ws, "start"), markers["start"]))}
migrate = {toml_argv(counted(migrate_argv(), markers["migrate"]))}
cwd = "{ws.app_dir}"
env_file = "{ws.env_file}"
tables = ["users", "grades"]
command_timeout = "30s"

[targets.grading.backups]
interval = "1h"
keep = "7d"
{key}
[targets.grading.policy]
{policy}
"""

"""Test first on git + service, end to end: a real daemon, real git work trees, the real sample
app as the live service and as the candidate.

The slow version stays live (its very process) until the candidate has answered faster; a
candidate that is not faster is never swapped in; a candidate a kill -9 left behind is stopped
by its recorded PID at start-up. Every path leaves no candidate process and no work tree.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollbackd.daemon.demo.sampleapp import service
from rollbackd.daemon.demo.workspace import SLOW_HEALTH, Workspace, free_port
from rollbackd.daemon.drills.injectors_git import HEALTH
from rollbackd.daemon.rollback.candidate import start_time
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e

CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]
CANDIDATE = ["start_candidate", "probe_candidate", "stop_candidate"]
SWAP = ["git_checkout", "install_dependencies", "restart_service"]
# The known-good version reads a delay from its environment: the slowness a shared dependency
# brings to every version alike (what a rollback cannot cure).
ENV_DELAY = "        time.sleep(float(os.environ.get('HEALTH_DELAY', '0')))\n"
SLOW = "        time.sleep(0.45)  # v2: the new template engine\n"


@dataclass
class LiveWatch:
    """Who serves the live port, sampled every 50 ms: (UTC time, pid in the pidfile)."""

    pidfile: Path
    seen: list[tuple[datetime, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> LiveWatch:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.append((datetime.now(UTC), service.running_pid(self.pidfile)))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def commit(ws: Workspace, line: str, message: str) -> str:
    app = ws.app_dir / "app.py"
    app.write_text(app.read_text().replace(HEALTH, HEALTH + line, 1))
    ws.git("commit", "-q", "-am", message)
    ws.restart()
    return ws.head()


def config(ws: Workspace, smtp: SmtpSink, extra: str = "") -> tuple[str, int]:
    spare = free_port()
    text = ws.config_toml(smtp.port, extra=extra, health_extra=SLOW_HEALTH)
    # A deploy's restart must not read as app_down on a loaded machine: 6 x 500 ms of grace.
    text = text.replace("failure_threshold = 3\n", "failure_threshold = 6\n", 1) + f"""
[targets.grading.deployment.test_first]
start = {json.dumps([sys.executable, "app.py"])}
port = {ws.port}
spare_port = {spare}
port_env = "SAMPLEAPP_PORT"
env_file = "{ws.env_file}"
max_latency = "300ms"
probe_within = "15s"
"""
    return text, spare


@pytest.fixture
def on_v1(workspace: Workspace) -> Iterator[Workspace]:
    ws = workspace
    ws.start()
    commit(ws, ENV_DELAY, "v1.1: health honours HEALTH_DELAY")
    yield ws


def start_known_good(ws: Workspace, smtp: SmtpSink, start_daemon: Any, **kw: Any
                     ) -> tuple[DaemonProcess, str, int]:
    text, spare = config(ws, smtp, **kw.pop("config", {}))
    d = start_daemon(text, **kw)
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()}")
    return d, good, spare


def steps(d: DaemonProcess, incident: int) -> list[sqlite3.Row]:
    with contextlib.closing(d.db()) as db:
        return list(db.execute("SELECT * FROM steps WHERE incident_id = ? ORDER BY id",
                               (incident,)))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def settled(d: DaemonProcess, states: tuple[str, ...]) -> Any:
    found = d.result("incidents")
    return found[0] if found and found[0]["state"] in states else None


def candidate_pid(detail: str) -> int:
    return int(detail.split("(pid ", 1)[1].split(")", 1)[0])


def nothing_left(ws: Workspace, d: DaemonProcess, pid: int) -> None:
    """No candidate process, no second work tree, no record."""
    assert start_time(pid) is None, f"candidate pid {pid} still runs"
    trees = ws.git("worktree", "list", "--porcelain").splitlines()
    assert [t for t in trees if t.startswith("worktree ")] == [f"worktree {ws.app_dir}"], trees
    assert not list((d.state_dir / "candidates").glob("*.json"))
    assert not [p for p in (d.state_dir / "candidates").iterdir() if p.is_dir()]


def test_slow_version_stays_live_until_the_candidate_answered_faster(
    on_v1: Workspace, smtp: SmtpSink, start_daemon: Any,
) -> None:
    ws = on_v1
    d, good, spare = start_known_good(ws, smtp, start_daemon)
    slow = commit(ws, SLOW, "v2: render the health page with the new template engine")
    slow_pid = service.running_pid(ws.pidfile)
    with LiveWatch(ws.pidfile) as watch:
        assert httpx.get(f"{ws.url}/health", timeout=5).elapsed.total_seconds() > 0.4
        inc = wait_for(lambda: settled(d, ("resolved", "escalated")), 60,
                       f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert show["incident_class"] == "perf_degraded"
    assert (show["from_version"], show["to_version"]) == (slow, good)
    rows = steps(d, inc["id"])
    assert [(r["name"], r["state"]) for r in rows] == [
        (n, "done") for n in [*CHECKLIST, *CANDIDATE, *SWAP, "verify"]]
    by = {r["name"]: r for r in rows}
    assert f"on port {spare}" in by["start_candidate"]["detail"]
    assert ": faster" in by["probe_candidate"]["detail"], by["probe_candidate"]["detail"]
    # The slow version's process served the live port until the candidate answered faster:
    # the only other pid seen is the restart's, and never before the probe was done.
    answered = at(by["probe_candidate"]["finished_at"])
    before = {pid for when, pid in watch.seen if when <= answered and pid is not None}
    assert before == {slow_pid}, (before, slow_pid)
    assert at(by["git_checkout"]["started_at"]) >= answered
    assert service.running_pid(ws.pidfile) != slow_pid
    assert ws.head() == good
    assert httpx.get(f"{ws.url}/health", timeout=5).elapsed.total_seconds() < 0.3
    nothing_left(ws, d, candidate_pid(by["start_candidate"]["detail"]))


def test_candidate_that_is_not_faster_is_never_swapped_in(
    on_v1: Workspace, smtp: SmtpSink, start_daemon: Any,
) -> None:
    ws = on_v1
    d, good, spare = start_known_good(ws, smtp, start_daemon)
    slow = commit(ws, SLOW, "v2: render the health page with the new template engine")
    slow_pid = service.running_pid(ws.pidfile)
    # Then a shared dependency slows every version alike: the known-good one starts as slow.
    with ws.env_file.open("a") as env:
        env.write("HEALTH_DELAY=0.45\n")

    inc = wait_for(lambda: settled(d, ("resolved", "escalated")), 60,
                   f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "escalated", show
    rows = steps(d, inc["id"])
    assert [(r["name"], r["state"]) for r in rows] == [
        *((n, "done") for n in [*CHECKLIST, "start_candidate"]), ("probe_candidate", "failed")]
    detail = rows[-1]["detail"]
    assert "above the latency limit 300 ms" in detail, detail
    assert f"escalating instead of swapping: nothing was swapped, {slow[:12]} stays live" in detail
    # Zero swaps: no checkout, no restart ever ran, and the slow process is the very same.
    assert sum(r["name"] in SWAP for r in rows) == 0
    assert not (d.state_dir / "receipts" / f"{inc['id']}-restart_service.json").exists()
    assert ws.head() == slow and service.running_pid(ws.pidfile) == slow_pid
    assert [b["failures"] for b in d.result("breaker") if b["target"] == "grading"] == [1]
    nothing_left(ws, d, candidate_pid(rows[5]["detail"]))
    time.sleep(3)  # still slow: still this one incident, nothing more was tried
    assert len(d.result("incidents")) == 1
    assert ws.head() == slow and service.running_pid(ws.pidfile) == slow_pid
    wait_for(lambda: any("ROLLBACK FAILED" in s for s in smtp.subjects), 15, "failure mail")


@pytest.mark.parametrize(("point", "step"), [
    pytest.param("ROLLBACKD_CRASH_AFTER_STEP", "start_candidate", id="after-start"),
    pytest.param("ROLLBACKD_CRASH_AT_STEP", "probe_candidate", id="at-probe"),
])
def test_kill9_leaves_a_candidate_that_recovery_stops_by_its_recorded_pid(
    on_v1: Workspace, smtp: SmtpSink, start_daemon: Any, point: str, step: str,
) -> None:
    ws = on_v1
    d, good, spare = start_known_good(ws, smtp, start_daemon,
                                      config={"extra": "test_hooks = true\n"}, env={point: step})
    slow = commit(ws, SLOW, "v2: render the health page with the new template engine")
    slow_pid = service.running_pid(ws.pidfile)
    assert d.proc is not None
    wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 60,
             f"the daemon killed at {step}\n{d.log_text()}")
    assert d.proc.returncode == -9
    (record,) = (d.state_dir / "candidates").glob("*.json")
    pid = json.loads(record.read_text())["pid"]
    assert start_time(pid) is not None  # the candidate outlived the daemon
    assert httpx.get(f"http://127.0.0.1:{spare}/health", timeout=5).status_code == 200

    d.env.pop(point)
    d.start()
    inc = wait_for(lambda: settled(d, ("held",)), 30, f"incident held\n{d.log_text()}")
    nothing_left(ws, d, pid)
    cut = next(r for r in steps(d, inc["id"]) if r["name"] == step)
    assert cut["state"] == "interrupted"
    assert f"stopped the candidate (pid {pid}" in cut["detail"], cut["detail"]
    assert ws.head() == slow and service.running_pid(ws.pidfile) == slow_pid

    assert d.ctl("approve", id=inc["id"])["ok"]
    inc = wait_for(lambda: settled(d, ("resolved", "escalated")), 60,
                   f"incident settled\n{d.log_text()}")
    assert inc["state"] == "resolved", d.result("show", id=inc["id"])
    rows = steps(d, inc["id"])
    assert [r["name"] for r in rows if r["state"] == "done"] == [
        *CHECKLIST, *CANDIDATE, *SWAP, "verify"]
    assert sum(r["name"] == "git_checkout" for r in rows) == 1  # one swap, after the answer
    assert ws.head() == good
    again = [r for r in rows if r["name"] in ("start_candidate", "probe_candidate")
             and r["state"] == "done" and "(pid " in r["detail"]][-1]
    nothing_left(ws, d, candidate_pid(again["detail"]))

"""Daemon lifecycle against real processes: SIGHUP reload, kill -9 mid-step, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e

HANGING_RESTART = """\
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(120)
"""


def test_sighup_with_a_bad_config_keeps_the_old_one(
    workspace: Workspace, smtp: SmtpSink, start_daemon
) -> None:
    ws = workspace
    ws.start()
    good_text = ws.config_toml(smtp.port)
    d = start_daemon(good_text)
    d.config.write_text(good_text.replace('interval = "500ms"', 'interval = "-1s"')
                        + "\n[targets.second]\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: "reload status=rejected keeping=previous" in d.log_text(), 10, "rejection")
    assert "targets.grading.probes.health.interval" in d.log_text()
    assert d.proc.poll() is None
    status = d.result("status")
    assert [t["target"] for t in status["targets"]] == ["grading"]
    wait_for(lambda: d.result("status")["targets"][0]["probes"]["health"] == "passing", 10,
             "probing goes on with the old config")

    # A valid config is taken on the next SIGHUP.
    d.config.write_text(good_text + f"""
[targets.second.probes.health]
kind = "http_health"
url = "{ws.url}/health"
interval = "1s"
""")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(d.result("status")["targets"]) == 2, 10, "reload with two targets")
    assert d.stop() == 0


def test_kill9_during_restart_holds_the_incident_and_runs_nothing_twice(
    workspace: Workspace, smtp: SmtpSink, start_daemon, tmp_path: Path
) -> None:
    ws = workspace
    script, marker = tmp_path / "hang.py", tmp_path / "restart-runs"
    script.write_text(HANGING_RESTART)
    ws.start()
    text = ws.config_toml(smtp.port, restart_argv=[sys.executable, str(script), str(marker)])
    d = start_daemon(text)
    good = ws.head()
    wait_for(lambda: known_good(d, good), 20, "v1 known-good")
    ws.deploy_broken()
    wait_for(marker.exists, 30, f"the restart step to start\n{d.log_text()}")
    with closing(d.db()) as db:
        step = db.execute("SELECT state FROM steps WHERE name = 'restart_service'").fetchone()
    assert step["state"] == "running"
    d.kill9()
    restart_pid = int(marker.read_text().split()[0])
    os.kill(restart_pid, signal.SIGKILL)  # the orphaned restart command, as systemd would

    d.start()  # same config, same journal
    inc = d.result("incidents")[0]
    assert inc["state"] == "held"
    show = d.result("show", id=inc["id"])
    states = {s["name"]: s["state"] for s in show["steps"]}
    assert states["restart_service"] == "interrupted"
    assert "verify" not in states  # nothing after the interrupted step ran
    assert "interrupted" in show["held_reason"]
    wait_for(lambda: any("HELD" in s for s in smtp.subjects), 15, "held mail")
    # The daemon keeps probing the still-broken app, but the held incident owns the target:
    # no second incident and no second restart.
    time.sleep(3)
    assert len(marker.read_text().split()) == 1
    assert len(d.result("incidents")) == 1
    with closing(d.db()) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class NotifyListener:
    """A real NOTIFY_SOCKET: a datagram socket that timestamps every message it gets."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if m == line]

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


def test_sd_notify_ready_watchdog_cadence_freeze_and_stopping(
    workspace: Workspace, smtp: SmtpSink, start_daemon, tmp_path: Path
) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        ws = workspace
        ws.start()
        d = start_daemon(ws.config_toml(smtp.port, extra="test_hooks = true"),
                         env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                              "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
        wait_for(lambda: listener.times("READY=1"), 5, "READY=1")
        time.sleep(1.5)
        pings = listener.times("WATCHDOG=1")
        assert listener.times("READY=1")[0] <= pings[0]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert len(pings) >= 5, pings
        assert max(gaps) < 0.4, gaps  # always within WATCHDOG_USEC

        # Block the event loop for 1.5 s: no WATCHDOG may be sent while it is blocked.
        before = time.monotonic()
        d.result("freeze", seconds=1.5)
        after = time.monotonic()
        time.sleep(0.6)
        during = [t for t in listener.times("WATCHDOG=1") if before + 0.25 < t < after - 0.05]
        assert during == []
        assert [t for t in listener.times("WATCHDOG=1") if t > after], "pings resume"
        assert any(m.startswith("STATUS=") for _, m in listener.messages)

        assert d.stop() == 0
        wait_for(lambda: listener.times("STOPPING=1"), 5, "STOPPING=1")
    finally:
        listener.close()

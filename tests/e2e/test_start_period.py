"""A starting release is not a failing one (issue 23): real sample-app releases that take long
to listen, never listen, or exit at once, deployed under a real daemon process."""

from __future__ import annotations

import subprocess
import time
from contextlib import closing
from datetime import datetime
from email.message import Message
from typing import Any

import httpx
import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e

LISTEN = "    server = make_server("


def commit_slow_start(ws: Workspace, seconds: float, what: str) -> str:
    """A release whose app sleeps before it listens (loading a model, warming a cache)."""
    app = ws.app_dir / "app.py"
    source = app.read_text()
    assert LISTEN in source
    app.write_text(source.replace(LISTEN, f"    time.sleep({seconds:g})  # {what}\n{LISTEN}", 1))
    ws.git("commit", "-q", "-am", f"v2: {what}")
    return ws.head()


def deploy(ws: Workspace) -> subprocess.Popen[bytes]:
    """Restart onto the new release as a deploy tool would, without waiting for it."""
    return subprocess.Popen(ws.restart_argv(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def with_period(text: str, period: str) -> str:
    # The deployment table's command_timeout is the config's first one.
    return text.replace('command_timeout = "30s"\n',
                        f'command_timeout = "30s"\nstart_period = "{period}"\n', 1)


def rollbacks(d: DaemonProcess) -> int:
    with closing(d.db()) as db:
        return int(db.execute("SELECT count(*) FROM incidents WHERE started_at IS NOT NULL"
                              ).fetchone()[0])


def ledger(d: DaemonProcess) -> dict[str, Any]:
    return {e["version"]: e for e in d.result("known-good", target="grading")}


def healthy(ws: Workspace) -> bool:
    try:
        return httpx.get(f"{ws.url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def plain_text(mail: Message) -> str:
    return "".join(str(p.get_payload(decode=True), "utf-8") for p in mail.walk()
                   if p.get_content_type() == "text/plain")


def ready(ws: Workspace, smtp: SmtpSink, start_daemon: Any, period: str | None) -> DaemonProcess:
    ws.start()
    text = ws.config_toml(smtp.port)
    d = start_daemon(with_period(text, period) if period else text)
    wait_for(lambda: known_good(d, ws.head()), 20, f"v1 known-good\n{d.log_text()}")
    return d


def test_a_release_that_takes_20s_to_listen_is_neither_rolled_back_nor_marked_bad(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    # The default start period; the health probe (500ms x 3) alone would trip in 1.5s.
    d = ready(ws, smtp, start_daemon, None)
    v2 = commit_slow_start(ws, 20, "warm the grade cache before listening")
    restart = deploy(ws)
    wait_for(lambda: not healthy(ws), 15, "v1 stopped")
    began = time.monotonic()
    # `status` says why nothing is done while it starts.
    said = wait_for(lambda: d.result("status")["targets"][0]["attention"], 15, "attention")
    assert said[0].startswith("starting: ") and "within the 30s start period" in said[0]
    wait_for(lambda: healthy(ws), 40, "v2 listening")
    assert time.monotonic() - began >= 15  # it really was slow to start
    assert restart.wait(30) == 0
    wait_for(lambda: known_good(d, v2), 20, f"v2 known-good\n{d.log_text()}")

    assert d.result("incidents") == []
    assert rollbacks(d) == 0
    assert ledger(d)[v2]["state"] != "bad"
    assert ws.head() == v2
    assert smtp.messages == []
    assert "status=starting" in d.log_text()


def test_a_release_that_never_listens_is_rolled_back_once_after_the_period(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    d = ready(ws, smtp, start_daemon, "8s")
    v1 = ws.head()
    v2 = commit_slow_start(ws, 3600, "wait for a queue that never answers")
    restart = deploy(ws)
    began = time.time()
    inc = wait_for(lambda: next((i for i in d.result("incidents") if i["state"] == "resolved"),
                                None), 60, f"incident resolved\n{d.log_text()}")
    restart.wait(40)  # its readiness wait ends when the rollback stops the app

    assert len(d.result("incidents")) == 1
    assert rollbacks(d) == 1
    show = d.result("show", id=inc["id"])
    assert show["incident_class"] == "app_down"
    assert "still failing after the 8s start period after release" in show["reason"]
    assert (show["from_version"], show["to_version"]) == (v2, v1)
    detected = datetime.fromisoformat(show["details"]["detected"]).timestamp()
    assert detected - began >= 8  # not before the period ended
    assert ledger(d)[v2]["state"] == "bad"
    assert ws.head() == v1 and healthy(ws)
    opened = wait_for(lambda: next((m for _, m in smtp.messages
                                    if "deployment_rollback" in str(m["Subject"])), None),
                      15, "the rollback's mail")
    assert "still failing after the 8s start period" in plain_text(opened)


def test_a_release_whose_process_exits_is_acted_on_without_waiting_for_the_period(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    ws = workspace
    d = ready(ws, smtp, start_daemon, "120s")
    v1 = ws.head()
    bad = ws.deploy_broken()  # exits at once: ImportError
    inc = wait_for(lambda: next((i for i in d.result("incidents") if i["state"] == "resolved"),
                                None), 45, f"incident resolved well within 120s\n{d.log_text()}")

    assert len(d.result("incidents")) == 1
    assert rollbacks(d) == 1
    show = d.result("show", id=inc["id"])
    assert show["incident_class"] == "app_down"
    assert "the process exited" in show["reason"] and "120s start period" in show["reason"]
    assert (show["from_version"], show["to_version"]) == (bad, v1)
    assert ws.head() == v1 and healthy(ws)

"""Fixtures for the drill tests: the sample app as a staging target under a real daemon."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rollbackd.daemon.demo.workspace import SLOW_HEALTH, Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for


@dataclass
class Staging:
    ws: Workspace
    d: DaemonProcess
    metrics_port: int

    def drill(self, *scenarios: str, timeout: float = 90) -> dict[str, Any]:
        """Start a drill through the control socket and follow it until it ends."""
        started = self.d.result("drill", target="grading", scenario=list(scenarios))
        deadline = time.monotonic() + timeout
        while True:
            found: dict[str, Any] = self.d.result("drills", id=started["id"])
            if found["state"] != "running":
                return found
            assert time.monotonic() < deadline, f"drill still running\n{self.d.log_text()}"
            time.sleep(0.2)


def staging_config(ws: Workspace, smtp_port: int, metrics_port: int, staging: bool = True,
                   injectors: dict[str, str] | None = None, drills: str = "") -> str:
    text = ws.config_toml(smtp_port, health_extra=SLOW_HEALTH,
                          targets_extra=ws.staging_toml(injectors, drills))
    text = text.replace('metrics_address = ""', f'metrics_address = "127.0.0.1:{metrics_port}"')
    if not staging:
        text = text.replace("staging = true", "staging = false")
        text = text[:text.index("[targets.grading.drills]")]
    return text + "\n[escalation]\nstorm_max = 50\n"


def ready_workspace(ws: Workspace) -> Workspace:
    ws.use_wal()
    ws.add_grades(40)
    ws.start()
    return ws


@pytest.fixture
def start_staging(workspace: Workspace, smtp: SmtpSink,
                  start_daemon: Callable[..., DaemonProcess]) -> Callable[..., Staging]:
    def start(staging: bool = True, injectors: dict[str, str] | None = None,
              drills: str = "") -> Staging:
        ws = ready_workspace(workspace)
        port = free_port()
        d = start_daemon(staging_config(ws, smtp.port, port, staging, injectors, drills))
        good = ws.head()
        wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()}")
        return Staging(ws, d, port)

    return start


@pytest.fixture
def staging(start_staging: Callable[..., Staging]) -> Staging:
    return start_staging()

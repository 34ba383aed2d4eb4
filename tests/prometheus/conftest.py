"""Real Prometheus parts for these tests: Debian's promtool and a prometheus server on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.alerts.rules import rules_text
from rollbackd.daemon.demo.workspace import free_port
from tests.conftest import wait_for

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
INSTALL = "scripts/services installs it (Debian package prometheus)"


def _binary(path: str) -> str:
    # Never a skip: a missing binary means the rules and the metrics go untested.
    if not (os.access(path, os.X_OK) or shutil.which(Path(path).name)):
        pytest.fail(f"{path} is missing; {INSTALL}", pytrace=False)
    return path if os.access(path, os.X_OK) else str(shutil.which(Path(path).name))


@pytest.fixture
def promtool() -> str:
    return _binary(PROMTOOL)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@dataclass
class PrometheusServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5, trust_env=False)
        r.raise_for_status()
        return r.json()["data"]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def launch_prometheus(root: Path, scrape: tuple[str, ...] = (),
                      port: int | None = None) -> PrometheusServer:
    """/usr/bin/prometheus on 127.0.0.1 with its own storage under root, scraping `scrape`
    (host:port) as job "rollbackd" every second, the shipped rules evaluated every second."""
    binary = _binary(PROMETHEUS)
    root.mkdir(parents=True)
    (root / "rollbackd.rules.yml").write_text(rules_text())
    targets = ", ".join(f'"{t}"' for t in scrape)
    (root / "prometheus.yml").write_text(textwrap.dedent(f"""\
        global:
          scrape_interval: 1s
          scrape_timeout: 900ms
          evaluation_interval: 1s
        rule_files: ["{root / 'rollbackd.rules.yml'}"]
        scrape_configs:
          - job_name: rollbackd
            static_configs: [{{targets: [{targets}]}}]
        """))
    port = port or free_port()
    log = root / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = PrometheusServer(port, proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}:\n{server.log_text()}")
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=1, trust_env=False).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 30, "prometheus ready")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """launch_prometheus for one test; every server it started is stopped by its PID after."""
    started: list[PrometheusServer] = []

    def start(scrape: tuple[str, ...] = (), port: int | None = None) -> PrometheusServer:
        server = launch_prometheus(tmp_path / f"prometheus-{len(started)}", scrape, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_for with a slower poll, for conditions that cost an HTTP round trip."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)

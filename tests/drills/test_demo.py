"""`rollbackd demo` as a user runs it: every scenario, the Docker one included (the tests'
private dockerd is the engine here: this test never skips it), one table, exit 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.services import DOCKER_SOCKET, docker_client

pytestmark = pytest.mark.e2e

ROWS = ["app_down", "auth_broken", "data_corruption", "perf_degraded", "key_invalid",
        "app_down (docker)"]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The demo's workspace holds the daemon's socket: its path must fit in sun_path."""
    path = Path(tempfile.mkdtemp(prefix="rbd-demo-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    docker_client().close()  # the engine must be there: fail (with how to start it), never skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{DOCKER_SOCKET}", "TMPDIR": str(tmp)}
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "rollbackd.daemon.cli", "demo", *args], env=env,
                         capture_output=True, text=True, timeout=170)
    return res, time.monotonic() - started


def table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("scenario "))
    rows = {}
    for line in lines[head + 1:]:
        if not line.strip():
            break
        label = "app_down (docker)" if line.startswith("app_down (docker)") else line.split()[0]
        rows[label] = line[len(label):].split()
    return rows


@pytest.mark.timeout(200)
def test_the_demo_runs_every_scenario_and_exits_0(short_tmp: Path) -> None:
    res, took = demo(short_tmp, "--keep")
    assert res.returncode == 0, res.stdout + res.stderr
    assert took < 120, f"the demo took {took:.0f}s"
    rows = table(res.stdout)
    assert list(rows) == ROWS, res.stdout
    for label, cells in rows.items():
        detected, rolled_back, verified, mails, result = cells[:5]
        assert result == "ok", (label, res.stdout)
        assert all(c.endswith("s") for c in (detected, rolled_back, verified)), cells
        assert float(detected[:-1]) <= float(rolled_back[:-1]) <= float(verified[:-1]), cells
        assert int(mails) >= 2, (label, cells)  # opened and resolved, at least
    # --keep: the workspace stays, with the socket path and the reports to look at.
    (kept,) = short_tmp.glob("rollbackd-demo-*")
    assert f"ROLLBACKCTL_SOCKET={kept / 'state' / 'control.sock'}" in res.stdout
    assert f"rollbackd run --config {kept / 'rollbackd.toml'}" in res.stdout
    assert len(list((kept / "state" / "reports").glob("drill-*.md"))) == 6
    assert "[targets.web" not in (kept / "rollbackd.toml").read_text()  # its containers are gone
    (name,) = re.findall(r"in container (rollbackd-demo-\w+-web)", res.stdout)
    client = docker_client()
    try:  # every container of this demo is gone, and its images
        assert not [c.name for c in client.containers.list(all=True) if c.name.startswith(name)]
        assert not [t for i in client.images.list() for t in i.tags
                    if t.startswith(f"rollbackd-demo/web:{name.split('-')[2]}-")]
    finally:
        client.close()

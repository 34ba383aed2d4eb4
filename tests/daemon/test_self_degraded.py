"""The daemon's own faults are never the target's, against a real `rollbackd run` under
systemd's default 1,024 descriptors (RLIMIT_NOFILE lowered in the child): thousands of idle
control clients are refused beyond the cap and change nothing; real descriptor exhaustion
inside the daemon makes it self_degraded, with no incident and one mail."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollbackd.daemon.control.ctl import request
from rollbackd.daemon.control.protocol import REQUEST_TIMEOUT
from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, wait_for

pytestmark = pytest.mark.e2e

NOFILE = 1024
"""systemd's default soft limit, the one the 1,100 idle clients used up."""
CAP = 64


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@dataclass
class Env:
    ws: Workspace
    smtp: SmtpSink
    daemon: DaemonProcess
    metrics_url: str

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return str(r.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        text = self.metrics()
        total = 0.0
        for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def incidents(self) -> int:
        with closing(self.daemon.db()) as db:
            return int(db.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])

    def degraded_mails(self) -> list[str]:
        return [s for s in self.smtp.subjects if "rollbackd itself is degraded" in s]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ws = Workspace.create(tmp_path / "ws")
    ws.start()
    smtp = SmtpSink()
    smtp.controller.start()
    state = Path(tempfile.mkdtemp(prefix="rollbackd-fd-"))  # a short socket path
    metrics = f"127.0.0.1:{free_port()}"
    text = ws.config_toml(smtp.port, state_dir=state).replace(
        'metrics_address = ""',
        f'metrics_address = "{metrics}"\ntest_hooks = true\nmax_control_connections = {CAP}')
    config = tmp_path / "rollbackd.toml"
    config.write_text(text)
    d = DaemonProcess(config, state / "control.sock", state, tmp_path / "daemon.log")
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "rollbackd.daemon.cli", "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_lower_nofile)
    e = Env(ws, smtp, d, f"http://{metrics}/metrics")
    try:
        wait_for(d.alive_and_answering, 20, f"daemon ready\n{d.log_text()}")
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{NOFILE}\s+{NOFILE}", limits), limits
        wait_for(lambda: e.sample("rollbackd_probe_runs_total", result="ok") >= 3, 20,
                 "the health probe to pass")
        yield e
    finally:
        d.stop()
        smtp.controller.stop()
        ws.stop()


def _read_reply(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.parametrize("clients", [1100, 5000])
def test_idle_control_clients_beyond_the_cap_are_refused_and_change_nothing(
        env: Env, clients: int) -> None:
    runs_before = env.sample("rollbackd_probe_runs_total", result="ok")
    started = time.monotonic()
    held: list[socket.socket] = []
    try:
        for _ in range(clients):  # blocking connects: a full backlog waits for the daemon
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(env.daemon.socket))
            held.append(s)
        connected = time.monotonic() - started
        assert connected < REQUEST_TIMEOUT, "too slow to hold every client at once"
        # While they are held, the daemon answers scrapes, and is not degraded.
        assert env.sample("rollbackd_self_degraded") == 0
        replies: Counter[str] = Counter()
        for s in held:
            s.settimeout(REQUEST_TIMEOUT * 3)
            buf = _read_reply(s)
            replies[json.loads(buf)["code"] if buf else "closed"] += 1
    finally:
        for s in held:
            s.close()
    # Exactly the cap was served (and timed out idle); every other client was refused.
    assert replies == {"timeout": CAP, "busy": clients - CAP}
    assert request(str(env.daemon.socket), "status", {})["result"]["self_degraded"] is None
    log = env.daemon.log_text()
    assert log.count("control status=refusing") == 1
    assert log.count(f"control status=accepting refused={clients - CAP} ") == 1
    elapsed = time.monotonic() - started
    # Probes kept their cadence (health every 500 ms) and every run passed.
    runs = env.sample("rollbackd_probe_runs_total", result="ok") - runs_before
    assert runs >= elapsed / 0.5 - 2, (runs, elapsed)
    assert env.sample("rollbackd_probe_runs_total", result="fail") == 0
    assert env.sample("rollbackd_probe_runs_total", result="error") == 0
    assert env.incidents() == 0
    assert env.degraded_mails() == []
    assert "self_degraded" not in log
    assert "Too many open files" not in log


def test_real_descriptor_exhaustion_is_self_degraded_not_the_apps_fault(env: Env) -> None:
    d = env.daemon
    reply = request(str(d.socket), "exhaust-fds", {"seconds": 3})
    assert reply["ok"], reply
    # Open files until EMFILE: everything the 1,024 allow but what was open already.
    assert NOFILE - 64 < reply["result"]["held"] < NOFILE
    # The held descriptors come back after 3 s; the episode ends 5 s after the last fault.
    wait_for(lambda: "self_degraded status=cleared" in d.log_text(), 40,
             f"the episode to end\n{d.log_text()[-3000:]}")
    log = d.log_text()
    assert log.count("self_degraded reason=descriptors") == 1, log[-3000:]
    assert log.count("self_degraded status=cleared") == 1
    dropped = int(re.search(r"dropped_observations=(\d+)", log).group(1))  # type: ignore[union-attr]
    assert dropped > 0  # the health probe ran meanwhile, and did not count
    assert env.incidents() == 0
    assert env.sample("rollbackd_probe_runs_total", result="fail") == 0
    assert env.sample("rollbackd_self_degraded") == 0
    wait_for(lambda: env.degraded_mails(), 30, "the self_degraded mail")
    with closing(d.db()) as db:
        queued = db.execute("SELECT message_id FROM outbox WHERE message_id LIKE "
                            "'%self-degraded-%'").fetchall()
    assert len(queued) == 1
    assert len(env.degraded_mails()) == 1
    assert request(str(d.socket), "status", {})["result"]["self_degraded"] is None
    assert os.path.exists(d.socket)

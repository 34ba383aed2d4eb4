"""Confirm before acting, on real parts: an app whose /health answers 503 while its Redis is down
(a real redis-server, stopped by PID), health probed every 0.5 s and Redis at its 10 s default.
Before the fix, the app's 503 reached its threshold before the Redis probe ran in about 1 run of
5, and the daemon took it for app_down. With every probe run afresh before an incident opens,
20 outages give 20 dependency_down incidents and not one app_down, and no plan ever starts."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.policies.settings import PolicySettings

pytestmark = pytest.mark.e2e

OUTAGES = 20


class RedisServer:
    """A real redis-server on a free loopback port, stopped and started again by its PID."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def answers(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def app_needing(redis_port: int) -> AsyncIterator[int]:
    """A tiny real HTTP app: /health is 200 while it can reach its Redis, else 503."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", redis_port),
                                              0.3)
                w.close()
                status = b"200 OK"
            except (OSError, TimeoutError):
                status = b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def config_text(app_port: int, redis_port: int) -> str:
    return f"""
[smtp]
host = "127.0.0.1"
port = 9
from = "rollbackd@localhost"

[contacts.oncall]
emails = ["oncall@example.com"]

[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:{app_port}/health"
interval = "500ms"
timeout = "1s"
failure_threshold = 2

[targets.web.probes.redis]
kind = "redis"
host = "127.0.0.1"
port = {redis_port}
timeout = "1s"
"""


async def wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_dependency_outage_is_never_taken_for_app_down(
        tmp_path: Path, redis_server: RedisServer) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    scheduler = ProbeScheduler(Metrics(CollectorRegistry()))
    try:
        async with app_needing(redis_server.port) as app_port:
            cfg = parse_config(config_text(app_port, redis_server.port))
            m = TargetMonitor("web", cfg.targets["web"], PolicySettings(), journal,
                              Outbox(journal, cfg), scheduler.metrics, tmp_path / "reports")
            assert m.settings["redis"].interval == 10.0  # the default, as the issue found it
            scheduler.schedule(m)
            scheduler.start()
            await wait_until(lambda: m.health["health"].passing, 20, "a healthy app")
            for outage in range(OUTAGES):
                redis_server.stop()
                # The app answers 503 at once; the debounced health fails within a second,
                # long before the Redis probe's next scheduled run.
                await wait_until(lambda: m.desk.current() is not None, 20,
                                 f"an incident in outage {outage}")
                await asyncio.sleep(1.0)  # more evaluations of the same picture
                redis_server.start()
                await wait_until(lambda: m.health["health"].passing, 20, "the app back")
            classes = [i.incident_class for i in journal.incidents.recent(100)]
            started = [i.id for i in journal.incidents.recent(100) if i.started_at is not None]
    finally:
        scheduler.shutdown()
        journal.close()
    assert "app_down" not in classes, classes
    assert started == []  # no plan of any kind ran
    # One outage may still be joined by the next while its incident waits to close: every
    # incident is the dependency's, and there is at least one.
    assert classes and set(classes) == {"dependency_down"}, classes

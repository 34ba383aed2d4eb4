"""A hung target is detected within interval x failure_threshold + timeout, whatever the timeout.

A real HTTP server on loopback that, once told to hang, accepts every request and trickles its
answer a byte at a time (a per-read timeout never fires), against a real TargetMonitor, the
real ProbeScheduler and a real journal. Before the overrun rule, a probe whose run was still
waiting dropped its next slots, so with timeout > interval detection took threshold x timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.daemon.scheduler import ProbeScheduler
from rollbackd.policies.settings import PolicySettings

THRESHOLD = 3


class TricklingServer:
    """Answers 200 after `delay` seconds until `hang()`; from then on trickles one header byte
    per 0.1 s."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.hanging = False
        self.stopped = False
        self.server: asyncio.Server | None = None
        self.handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def hang(self) -> float:
        self.hanging = True
        return time.monotonic()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers[task] = writer
        try:
            while not self.stopped and await reader.readuntil(b"\r\n\r\n"):
                if not self.hanging:
                    await asyncio.sleep(self.delay)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stopped:  # never ends the header: only the run's timeout stops it
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.1)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.pop(task, None)

    async def stop(self) -> None:
        assert self.server is not None
        self.stopped = True
        self.server.close()
        for writer in self.handlers.values():
            writer.close()  # an idle keep-alive connection's read ends too
        await asyncio.gather(*self.handlers)
        await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[TricklingServer]:
    s = TricklingServer()
    await s.start()
    yield s
    await s.stop()


async def wait_for(condition: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {within:g}s"
        await asyncio.sleep(0.02)


def monitor(tmp_path: Path, port: int, interval: float, timeout: float,
            extra: str = "") -> tuple[TargetMonitor, Journal]:
    cfg = parse_config(f'[targets.web.probes.health]\nkind = "http_health"\n'
                       f'url = "http://127.0.0.1:{port}/health"\n'
                       f"interval = {interval}\ntimeout = {timeout}\n"
                       f"failure_threshold = {THRESHOLD}\n{extra}")
    journal = Journal(tmp_path / "journal.sqlite3")
    return TargetMonitor("web", cfg.targets["web"], PolicySettings(), journal,
                         Outbox(journal, cfg), Metrics(CollectorRegistry()),
                         tmp_path / "reports"), journal


@pytest.mark.parametrize(("interval", "timeout"), [
    pytest.param(1.0, 2.0, id="timeout=2x_interval"),
    pytest.param(2.0, 1.0, id="timeout=interval/2"),
])
async def test_a_hung_target_is_detected_within_the_bound(
        server: TricklingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        interval: float, timeout: float) -> None:
    m, journal = monitor(tmp_path, server.port, interval, timeout)
    sched = ProbeScheduler(Metrics(CollectorRegistry()))
    sched.schedule(m)
    sched.start()
    caplog.set_level(logging.INFO, "rollbackd.monitor")
    try:
        # Hang right after a passing run: the worst moment, a whole interval before the next.
        await wait_for(lambda: (h := m.health["health"].last) is not None and h.ok,
                       within=interval * 3)
        hung_at = server.hang()
        bound = (interval * THRESHOLD + timeout) * 1.1
        await wait_for(lambda: journal.incidents.open_for("web") is not None, within=bound + 5)
        detected = time.monotonic() - hung_at
        incident = journal.incidents.open_for("web")
        assert incident is not None and incident.incident_class == "app_down"
        assert detected <= bound, f"detected after {detected:.2f}s, bound {bound:.2f}s"
        # The run that was waiting is recorded as usual when it ends: a timeout, not an overrun.
        await wait_for(lambda: (h := m.health["health"].last) is not None
                       and h.detail.startswith("timed out"), within=interval + timeout * 2)
    finally:
        sched.shutdown()
        journal.close()
    overruns = [r for r in caplog.records if "status=overrun" in r.getMessage()]
    # Logged once per failing streak, not every slot; with timeout < interval runs never overlap.
    assert len(overruns) == (1 if timeout > interval else 0), [r.getMessage() for r in overruns]


async def test_a_probe_slower_than_its_interval_but_within_its_timeout_still_passes(
        server: TricklingServer, tmp_path: Path) -> None:
    """Every answer takes 1.5 intervals (the timeout allows 3): each run meets an overrun, and
    each overrun is taken back when the run passes, so the probe passes and nothing opens."""
    server.delay = 1.5
    m, journal = monitor(tmp_path, server.port, 1.0, 3.0, "success_threshold = 2\n")
    sched = ProbeScheduler(Metrics(CollectorRegistry()))
    sched.schedule(m)
    sched.start()
    try:
        await wait_for(lambda: m.health["health"].passing, within=10)

        def runs(status: str) -> float:
            return float(m.metrics.probe_runs.labels("web", "health", status)._value.get())

        ok, failed = runs("ok"), runs("fail")
        for n in range(1, 6):  # five more runs, each met by one overrun
            await wait_for(lambda: runs("ok") == ok + n, within=5)  # noqa: B023
            assert m.health["health"].passing
        assert runs("fail") == failed + 5  # the overruns were recorded, then taken back
        assert journal.incidents.open_for("web") is None
    finally:
        sched.shutdown()
        journal.close()

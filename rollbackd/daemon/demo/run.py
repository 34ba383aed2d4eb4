"""The demo's session: sample app + local mail sink + in-process daemon (+ a Docker app), on
which each scenario runs as a drill. `rollbackd demo` and the benchmarks drive it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.demo.docker import DemoDocker, find_engine, static_busybox
from rollbackd.daemon.demo.workspace import SLOW_HEALTH, Workspace, free_port
from rollbackd.daemon.drills.preflight import detectors
from rollbackd.daemon.drills.record import ScenarioRun
from rollbackd.daemon.drills.scenarios import SCENARIOS
from rollbackd.daemon.drills.settings import SCENARIO_NAMES

if TYPE_CHECKING:
    from rollbackd.daemon.app import Daemon

ORDER = ("app_down", "auth_broken", "data_corruption", "perf_degraded", "key_invalid")
assert set(ORDER) == set(SCENARIO_NAMES)


class MailSink:
    """A local SMTP server that keeps what it receives: the demo's stand-in for inboxes."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []

        sink = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
                sink.messages.append(envelope.content)  # type: ignore[attr-defined]
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> int:
        self.controller.start()
        return self.port

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class Row:
    label: str
    target: str
    scenario: str
    run: ScenarioRun | None = None
    mails: int = 0
    note: str = ""
    """Why the row was skipped (no Docker engine)."""

    @property
    def skipped(self) -> bool:
        return self.run is None and bool(self.note)

    @property
    def ok(self) -> bool:
        return self.skipped or (self.run is not None and self.run.passed)


async def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g}s")
        await asyncio.sleep(0.1)


class DemoSession:
    """Everything the demo starts, and stops again on exit (also after a failure)."""

    def __init__(self, root: Path, say: Callable[[str], None], docker: bool = True,
                 docker_host: str | None = None) -> None:
        self.root, self.say = root, say
        self.want_docker, self.docker_host = docker, docker_host
        self.sink = MailSink()
        self.ws: Workspace | None = None
        self.docker: DemoDocker | None = None
        self.docker_note = "not asked for"
        self.daemon: Daemon | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "rollbackd.toml"

    async def __aenter__(self) -> DemoSession:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.sink.start()
        ws = self.ws = await asyncio.to_thread(Workspace.create, self.root)
        ws.use_wal()
        ws.add_grades(40)
        ws.start()
        self.say(f"sample app {ws.head()[:7]} deployed from git on {ws.url} (SQLite, Alembic "
                 "0003, a Fernet key)")
        if self.want_docker:
            await asyncio.to_thread(self._docker)
        self.config_path.write_text(self.config_text())
        await self._start_daemon()

    def _docker(self) -> None:
        host, note = find_engine(self.docker_host)
        why = note or static_busybox()
        if host is None or why:
            self.docker_note = why or note
            self.say(f"Docker: skipped, {self.docker_note}")
            return
        d = DemoDocker(host)
        try:
            d.build()
            d.start()
        except Exception as exc:
            d.cleanup()
            raise RuntimeError(f"Docker engine at {host}: {exc}") from exc
        self.docker = d
        self.say(f"Docker: web v1 in container {d.name} on 127.0.0.1:{d.port} ({host})")

    def config_text(self, docker: bool = True) -> str:
        assert self.ws is not None
        text = self.ws.config_toml(self.sink.port, health_extra=SLOW_HEALTH,
                                   targets_extra=self.ws.staging_toml())
        # Six incidents within minutes would be a mail storm (digests) by the default limit.
        text += "\n[escalation]\nstorm_max = 50\n"
        return text + (self.docker.target_toml() if docker and self.docker else "")

    def _stopped(self) -> bool:
        """False while the in-process daemon serves; once it stopped, its error, at once."""
        if self._serving is not None and self._serving.done():
            self._serving.result()  # raises what stopped it
            raise RuntimeError("the daemon stopped")
        return False

    async def _start_daemon(self) -> None:
        from rollbackd.daemon.app import Daemon

        config = parse_config(self.config_path.read_text(), str(self.config_path), self.root)
        if len(bytes(config.daemon.socket)) > 107:
            raise RuntimeError(f"the workspace path is too long for the daemon's Unix socket "
                               f"({config.daemon.socket}): set TMPDIR to a shorter directory")
        d = self.daemon = Daemon(config, self.config_path)
        self._serving = asyncio.create_task(d.serve(install_signals=False))
        await _wait(lambda: self._stopped() or (hasattr(d, "control") and d.monitors), 20,
                    "the daemon to start")
        self.say("daemon started; waiting until every target's version is known-good ...")
        for target, m in d.monitors.items():
            version = await m.current_version(0.0)
            await _wait(lambda t=target, v=version: self._stopped() or any(  # type: ignore[misc]
                e.version == v and e.known_good for e in d.journal.ledger.entries(t)), 40,
                f"{target} known-good")

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.daemon is not None and self._serving is not None:
                self.daemon.handle_exit(0)
                with contextlib.suppress(Exception):  # a failed start already said why
                    await self._serving
        finally:
            try:
                if self.ws is not None:
                    self.ws.stop()
                if self.docker is not None:
                    await asyncio.to_thread(self.docker.cleanup)
            finally:
                self.sink.stop()

    def targets(self, scenarios: tuple[str, ...] = ORDER) -> list[tuple[str, str, str]]:
        """(label, target, scenario) of every row the demo shows."""
        rows = [(s, "grading", s) for s in scenarios]
        if self.want_docker and "app_down" in scenarios:
            rows.append(("app_down (docker)", "web", "app_down"))
        return rows

    async def drill(self, label: str, target: str, scenario: str) -> Row:
        d = self.daemon
        assert d is not None
        if target not in d.monitors:
            return Row(label, target, scenario, note=self.docker_note)
        before = len(self.sink.messages)
        run = await d.drills.run(target, [scenario], "rollbackd demo")
        await _wait(lambda: d.journal.mail.counts()["queued"] == 0, 15, "mail delivery")
        s = run.scenarios[0]
        self.say(f"{label}: {s.result}" + (f" ({s.reason})" if s.reason else "")
                 + (f", incident {s.incident}" if s.incident else ""))
        return Row(label, target, scenario, s, len(self.sink.messages) - before)

    def detection_bound(self, row: Row) -> tuple[str, float] | None:
        """The configured bound on detecting the row's fault: the fastest probe that can see
        it, interval x failure_threshold + timeout."""
        d = self.daemon
        m = d.monitors.get(row.target) if d is not None else None
        if m is None:
            return None
        bounds = [(p, m.settings[p].interval * m.settings[p].failure_threshold
                   + m.settings[p].timeout) for p in detectors(m, SCENARIOS[row.scenario])]
        return min(bounds, key=lambda b: b[1], default=None)

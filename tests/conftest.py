"""Shared fixtures: a real SMTP server, a sample-app workspace, and real daemon processes."""

from __future__ import annotations

import email
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.control.ctl import request
from rollbackd.daemon.demo.workspace import Workspace, free_port

pytest_plugins = ["tests.infra.fixtures"]


class SmtpSink:
    """A real aiosmtpd server on loopback that keeps every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], Message]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append((list(envelope.rcpt_tos),
                                      email.message_from_bytes(envelope.content)))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    @property
    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, m in self.messages]


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace.create(tmp_path / "ws")
    yield ws
    ws.stop()


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class DaemonProcess:
    config: Path
    socket: Path
    state_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollbackd.daemon.cli", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            )
        wait_for(lambda: self.alive_and_answering(), 20, f"daemon ready\n{self.log_text()}")
        return self

    def alive_and_answering(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
        try:
            return bool(self.ctl("status")["ok"])
        except OSError:
            return False
        except Exception:  # noqa: BLE001 - the socket exists but the daemon is still starting
            return False

    def ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        return request(str(self.socket), cmd, args)

    def result(self, cmd: str, **args: Any) -> Any:
        reply = self.ctl(cmd, **args)
        assert reply["ok"], reply
        return reply["result"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def db(self) -> sqlite3.Connection:
        """A read-only view of the daemon's journal (WAL lets us read while it writes)."""
        db = sqlite3.connect(f"file:{self.state_dir / 'journal.sqlite3'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        return db


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config_text: str, env: dict[str, str] | None = None,
              name: str = "rollbackd.toml") -> DaemonProcess:
        config = tmp_path / name
        config.write_text(config_text)
        from rollbackd.daemon.config import load_config

        cfg = load_config(config)
        d = DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir,
                          tmp_path / "daemon.log", env or {})
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()


def known_good(d: DaemonProcess, version: str) -> bool:
    with closing(d.db()) as db:
        found = db.execute("SELECT known_good_at FROM ledger WHERE version = ?",
                           (version,)).fetchone()
    return bool(found and found[0])

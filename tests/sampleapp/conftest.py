"""Fixtures that deploy the sample grading app into a temp dir and run it as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.sampleapp import scaffold, service

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
USERS = ("alice@example.org", "lockme@example.org")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """One scaffolded app dir with its own sqlite DB, port, pidfile and log."""

    dir: Path
    env: dict[str, str]
    port: int
    pidfile: Path
    log: Path
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python ARGV...` in the deployed dir, as an operator would."""
        proc = subprocess.run(
            [sys.executable, *argv],
            cwd=self.dir,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli(self, action: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the service CLI the way the daemon's restart command does."""
        env_args = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        argv = [
            "-m",
            "rollbackd.daemon.demo.sampleapp.service",
            action,
            "--dir",
            str(self.dir),
            "--pidfile",
            str(self.pidfile),
            "--log",
            str(self.log),
            *env_args,
        ]
        pythonpath = [str(REPO_ROOT), os.environ.get("PYTHONPATH")]
        proc = subprocess.run(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, pythonpath))},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        pid = service.running_pid(self.pidfile)
        if pid is not None:
            self.pids.append(pid)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"service {action} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def start(self) -> int:
        pid = service.start(self.dir, self.pidfile, self.log, self.env)
        self.pids.append(pid)
        return pid

    def wait_healthy(self, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                resp = httpx.get(f"{self.url}/health", timeout=2.0)
                if resp.status_code == 200:
                    return dict(resp.json())
                last = resp.text
            except httpx.TransportError as exc:
                last = exc
            if service.running_pid(self.pidfile) is None:
                break  # died: no point waiting for the full timeout
            time.sleep(0.1)
        raise AssertionError(f"app never became healthy (last: {last!r}); log:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def teardown(self) -> None:
        service.stop(self.pidfile)
        # Belt and braces: anything we ever started must be gone even if the pidfile was lost.
        for pid in self.pids:
            if service.is_app_process(pid):
                os.kill(pid, signal.SIGKILL)


def deploy(base: Path, migrate: bool = True, seed: bool = True) -> Deployment:
    app_dir = base / "app"
    scaffold(app_dir)
    env = {
        "SAMPLEAPP_HOST": "127.0.0.1",
        "SAMPLEAPP_PORT": str(free_port()),
        "DATABASE_URL": f"sqlite:///{app_dir / 'grading.db'}",
        "DB_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SAMPLEAPP_FAULTS": "1",
        "SAMPLEAPP_VERSION": "test-1",
    }
    port = int(env["SAMPLEAPP_PORT"])
    dep = Deployment(app_dir, env, port, base / "run" / "app.pid", base / "log" / "app.log")
    if migrate:
        dep.run("-m", "alembic", "upgrade", "head")
    if seed:
        for email in USERS:
            dep.run("seed.py", email, PASSWORD)
    return dep


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One running app shared by the read-mostly tests of a module."""
    dep = deploy(tmp_path_factory.mktemp("live"))
    try:
        dep.start()
        dep.wait_healthy()
        yield dep
    finally:
        dep.teardown()


@pytest.fixture
def client(live_app: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_app.url, timeout=10.0) as http:
        yield http
        # Never leak an injected fault into the next test.
        http.post("/_fault", json={"mode": "none"})


@pytest.fixture
def fresh_app(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Factory for a private deployment, for tests that break, migrate or kill the app."""
    made: list[Deployment] = []

    def factory(**kwargs: bool) -> Deployment:
        dep = deploy(tmp_path / f"d{len(made)}", **kwargs)
        made.append(dep)
        return dep

    yield factory
    for dep in made:
        dep.teardown()

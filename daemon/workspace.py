"""A sample-app deployment in a directory: git repo, database, key, service; for demo and tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from daemon.sampleapp import scaffold, service

DEMO_USER = ("probe@example.com", "correct horse battery staple")
GIT_ID = ["-c", "user.name=rollbackd demo", "-c", "user.email=demo@localhost",
          "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]

# A deploy that cannot start: the kind of mistake that takes an app down at 3 a.m.
BROKEN_PATCH = '\nraise SystemExit("ImportError: settings module grading_settings is missing")\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Workspace:
    root: Path
    port: int

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def pidfile(self) -> Path:
        return self.root / "run" / "app.pid"

    @property
    def app_log(self) -> Path:
        return self.root / "log" / "app.log"

    @property
    def env_file(self) -> Path:
        return self.root / "app.env"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def git(self, *args: str) -> str:
        out = subprocess.run(["git", *GIT_ID, "-C", str(self.app_dir), *args], check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def env(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.env_file.read_text().splitlines() if line)
        return {k: v for k, v in pairs}

    def _app_python(self, *argv: str) -> None:
        subprocess.run([sys.executable, *argv], cwd=self.app_dir, check=True,
                       env={**os.environ, **self.env()}, capture_output=True)

    @classmethod
    def create(cls, root: Path, port: int | None = None) -> Workspace:
        ws = cls(root, port or free_port())
        for d in ("run", "log", "data", "state"):
            (root / d).mkdir(parents=True, exist_ok=True)
        scaffold(ws.app_dir)
        ws.env_file.write_text(
            f"SAMPLEAPP_PORT={ws.port}\nDATABASE_URL=sqlite:///{root / 'data' / 'grading.db'}\n"
            f"DB_ENCRYPTION_KEY={Fernet.generate_key().decode()}\nSAMPLEAPP_VERSION=demo\n")
        os.chmod(ws.env_file, 0o600)
        subprocess.run(["git", *GIT_ID, "init", "-q", str(ws.app_dir)], check=True)
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "v1: grading app")
        ws._app_python("-m", "alembic", "upgrade", "head")
        ws._app_python("seed.py", *DEMO_USER)
        return ws

    def restart_argv(self) -> list[str]:
        return [sys.executable, "-m", "daemon.sampleapp.service", "restart",
                "--dir", str(self.app_dir), "--pidfile", str(self.pidfile),
                "--log", str(self.app_log), "--env-file", str(self.env_file)]

    def start(self) -> None:
        service.start(self.app_dir, self.pidfile, self.app_log, self.env())

    def restart(self) -> None:
        service.restart(self.app_dir, self.pidfile, self.app_log, self.env())

    def stop(self) -> None:
        service.stop(self.pidfile)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def deploy_broken(self) -> str:
        """Commit a version that will not start on the branch and restart onto it."""
        app = self.app_dir / "app.py"
        head, sep, rest = app.read_text().partition("from __future__ import annotations\n")
        app.write_text(head + sep + BROKEN_PATCH + rest)
        self.git("commit", "-q", "-am", "v2: load settings from grading_settings")
        self.restart()
        return self.head()

    def config_toml(self, smtp_port: int, state_dir: Path | None = None, extra: str = "",
                    restart_argv: list[str] | None = None, targets_extra: str = "") -> str:
        """A complete config for this workspace; `extra` lands in [daemon]."""
        state = state_dir or self.root / "state"
        argv = ", ".join(json.dumps(a) for a in restart_argv or self.restart_argv())
        return f"""\
[daemon]
state_dir = "{state}"
socket = "{state / 'control.sock'}"
metrics_address = ""
{extra}
[smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "rollbackd@localhost"

[contacts.oncall]
emails = ["oncall@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com"]

[policy]
stable_after = "2s"
verify_timeout = "30s"
cooldown = "10s"

[targets.grading.deployment]
kind = "git"
repo = "{self.app_dir}"
restart = [{argv}]
command_timeout = "30s"

[targets.grading.probes.health]
kind = "http_health"
url = "{self.url}/health"
interval = "500ms"
timeout = "1s"
failure_threshold = 3
{targets_extra}"""

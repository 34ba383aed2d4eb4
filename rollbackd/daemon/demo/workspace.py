"""A sample-app deployment in a directory: git repo, database, key, service; for demo and tests."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from rollbackd.daemon.demo.sampleapp import scaffold, service
from rollbackd.daemon.drills.injectors_git import BROKEN_PATCH

__all__ = ["BROKEN_PATCH", "DEMO_USER", "GIT_ID", "SLOW_HEALTH", "Workspace", "free_port"]

DEMO_USER = ("probe@example.com", "correct horse battery staple")
GIT_ID = ["-c", "user.name=rollbackd demo", "-c", "user.email=demo@localhost",
          "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]

# The health probe's latency limit for the staging config: the slow version's /health misses it.
SLOW_HEALTH = 'max_latency = "300ms"\n'
# The built-in drill injectors of the staging config, one per scenario (TOML inline tables).
SAMPLEAPP_INJECTORS = {
    "app_down": '{ builtin = "sampleapp_wont_start" }',
    "auth_broken": '{ builtin = "alembic_bad_migration" }',
    "data_corruption": '{ builtin = "sqlite_corrupt_page", table = "ix_grades_user_id" }',
    "perf_degraded": '{ builtin = "sampleapp_slow", delay = "450ms" }',
    "key_invalid": '{ builtin = "fernet_replace_key" }',
}


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
        return [sys.executable, "-m", "rollbackd.daemon.demo.sampleapp.service", "restart",
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

    # -- the data side: WAL, rows, the probe's password, the key's canary --------------------

    @property
    def db_path(self) -> Path:
        return self.root / "data" / "grading.db"

    def use_wal(self) -> None:
        """The database in WAL mode, as a live app's would be (backups stay consistent)."""
        with closing(sqlite3.connect(self.db_path)) as db:
            db.execute("PRAGMA journal_mode=WAL")

    def add_grades(self, n: int, course: str = "math") -> None:
        with closing(sqlite3.connect(self.db_path, timeout=10)) as db:
            uid = db.execute("SELECT id FROM users ORDER BY id LIMIT 1").fetchone()[0]
            db.executemany("INSERT INTO grades (user_id, course, grade) VALUES (?, ?, ?)",
                           [(uid, course, str(i % 100)) for i in range(n)])
            db.commit()

    def password_file(self) -> Path:
        """The login probe's password (the demo user's), 0600."""
        path = self.root / "probe-password"
        if not path.exists():
            path.write_text(DEMO_USER[1] + "\n")
            os.chmod(path, 0o600)
        return path

    def canary_file(self) -> Path:
        """A Fernet token made with the app's key: a key that cannot decrypt it is wrong."""
        path = self.root / "key.canary"
        if not path.exists():
            key = self.env()["DB_ENCRYPTION_KEY"].encode()
            path.write_text(Fernet(key).encrypt(b"grading canary").decode() + "\n")
        return path

    def service_argv(self, action: str) -> list[str]:
        """The sample app's start/stop/restart command (what systemctl would be)."""
        return [*self.restart_argv()[:3], action, *self.restart_argv()[4:]]

    def staging_toml(self, injectors: dict[str, str] | None = None, drills: str = "") -> str:
        """Everything a staging target needs beside config_toml(...): probes for every
        scenario, database, key, backups, `staging = true` and drills with the built-in
        injectors. Pass it as targets_extra, with health_extra=SLOW_HEALTH."""
        def toml(argv: list[str]) -> str:
            return json.dumps(argv)

        chosen = {**SAMPLEAPP_INJECTORS, **(injectors or {})}  # an empty value: none
        lines = "".join(f"{k} = {v}\n" for k, v in chosen.items() if v)
        return f"""
[targets.grading.probes.login]
kind = "login"
url = "{self.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{self.password_file()}"
interval = "1s"
timeout = "5s"
failure_threshold = 2

[targets.grading.probes.integrity]
kind = "sqlite_integrity"
path = "{self.db_path}"
interval = "500ms"
timeout = "2s"
failure_threshold = 1
full_check_every = "2s"
required_tables = ["users", "grades"]

[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{self.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{self.canary_file()}"
interval = "500ms"
failure_threshold = 2

[targets.grading.database]
kind = "sqlite"
path = "{self.db_path}"
stop = {toml(self.service_argv("stop"))}
start = {toml(self.service_argv("start"))}
migrate = {toml([sys.executable, "-m", "alembic", "downgrade", "{revision}"])}
cwd = "{self.app_dir}"
env_file = "{self.env_file}"
tables = ["users", "grades"]
command_timeout = "30s"

[targets.grading.key]
file = "{self.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{self.canary_file()}"
restart = {toml(self.restart_argv())}
command_timeout = "30s"

[targets.grading]
staging = true

[targets.grading.drills]
timeout = "60s"
{drills}
[targets.grading.drills.injectors]
{lines}"""

    def config_toml(self, smtp_port: int, state_dir: Path | None = None, extra: str = "",
                    restart_argv: list[str] | None = None, targets_extra: str = "",
                    health_extra: str = "") -> str:
        """A complete config for this workspace; `extra` lands in [daemon], `health_extra` in
        the health probe's table."""
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
{health_extra}{targets_extra}"""

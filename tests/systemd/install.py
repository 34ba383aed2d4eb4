"""A booted Debian with rollbackd installed as an administrator would (conftest: `installed`).

`booted_with_rollbackd()` boots systemd as PID 1 in a container built locally for the tests
(tests/systemd/rootfs.py), then installs rollbackd the way README.md ("Running it under systemd")
and systemd/README.md tell an administrator to: its own venv from wheels, the shipped units,
sysusers.d and tmpfiles.d, credentials in /etc/credstore, the drop-in naming the deployment
directory, the polkit rule; and beside it the sample app as its own service
(systemd/examples/grading.service) deployed from a git work tree. Nothing here skips: a missing
part (dockerd, debootstrap, the mirror) fails with the reason.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import docker
import httpx
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import DEMO_USER, GIT_ID, free_port
from tests.infra.services import ContainerRunner
from tests.systemd.machine import SystemdMachine
from tests.systemd.rootfs import MARKER_ENV_SCRIPT, project_wheel, systemd_image, wheelhouse

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
VENV = "/opt/rollbackd/venv"
APP_VENV = "/opt/grading/venv"
REPO = "/srv/grading"
SOCKET = "/run/rollbackd/control.sock"
CREDENTIALS = "/run/credentials/rollbackd.service"
SMTP_USER, SMTP_PASSWORD = "rollbackd", "s3cret-" + secrets.token_hex(8)


class AuthSmtpSink:
    """A real aiosmtpd server on 127.0.0.1 that offers AUTH (plain text is fine on loopback) and
    keeps the mails and the credentials it was given."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[Message] = []
        self.logins: list[tuple[str, str]] = []
        sink = self

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> AuthResult:
            if isinstance(auth_data, LoginPassword):
                login, password = auth_data.login.decode(), auth_data.password.decode()
                sink.logins.append((login, password))
                return AuthResult(success=(login, password) == (SMTP_USER, SMTP_PASSWORD))
            return AuthResult(success=False)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                import email

                sink.messages.append(email.message_from_bytes(envelope.content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     authenticator=authenticator, auth_require_tls=False)

    @property
    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


@dataclass
class Installed:
    """The booted machine with rollbackd and the grading app running."""

    m: SystemdMachine
    app_port: int
    smtp: AuthSmtpSink
    v1: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    def ctl(self, *args: str, user: str | None = None) -> Any:
        """rollbackctl --json ARGS inside the container (as root, or as `user`); the result."""
        argv = ["rollbackctl", "--json", *args]  # /usr/local/bin, linked as README.md says
        r = self.m.as_user(user, *argv) if user else self.m.run(*argv)
        return json.loads(r.check().out)

    def request(self, cmd: str, **args: Any) -> None:
        """A raw control-socket request through rollbackctl's client, in the background (for
        commands rollbackctl has no sub-command for, such as the freeze test hook)."""
        code = ("import sys, json; from rollbackd.daemon.control.ctl import request; "
                f"request({SOCKET!r}, {cmd!r}, json.loads(sys.argv[1]))")
        self.m.detach(f"{VENV}/bin/python", "-c", code, json.dumps(args))

    def git(self, *args: str) -> str:
        return self.m.as_user("rollbackd", "git", *GIT_ID, "-C", REPO, *args).check().out.strip()

    def journal_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the tables that must survive a restart, read from the state dir."""
        code = """
import json, sqlite3
db = sqlite3.connect("file:/var/lib/rollbackd/journal.sqlite3?mode=ro", uri=True)
out = {}
for t in ("incidents", "timeline", "steps", "ledger", "audit"):
    out[t] = db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
print(json.dumps(out))
"""
        rows = json.loads(self.m.ok(f"{VENV}/bin/python", "-c", code))
        return {t: [tuple(r) for r in v] for t, v in rows.items()}

    def app_health(self) -> int | None:
        try:
            return httpx.get(f"{self.app_url}/health", timeout=2).status_code
        except httpx.HTTPError:
            return None


def config_toml(app_port: int, smtp_port: int) -> str:
    return f"""\
# /etc/rollbackd/rollbackd.toml of the systemd tests; state_dir and socket are the defaults
# (/var/lib/rollbackd = StateDirectory, /run/rollbackd/control.sock = RuntimeDirectory).
[daemon]
metrics_address = ""
allowed_groups = ["rollbackd"]   # operators in group rollbackd may use rollbackctl
test_hooks = true          # the freeze command that proves the watchdog

[smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "rollbackd@localhost"
username = "{SMTP_USER}"
password_file = "smtp-password"     # a bare name: the systemd credential (LoadCredential=)

[contacts.oncall]
emails = ["oncall@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com"]

[policy]
stable_after = "2s"
verify_timeout = "60s"
cooldown = "10s"

[targets.grading.deployment]
kind = "git"
repo = "{REPO}"
restart = ["systemctl", "restart", "grading.service"]
command_timeout = "60s"

[targets.grading.probes.health]
kind = "http_health"
url = "http://127.0.0.1:{app_port}/health"
interval = "500ms"
timeout = "1s"
failure_threshold = 3

[targets.grading.probes.login]
kind = "login"
url = "http://127.0.0.1:{app_port}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{CREDENTIALS}/login-probe-password"
interval = "1s"
timeout = "2s"
failure_threshold = 3
"""


def _install_rollbackd(m: SystemdMachine, house: Path, wheel: Path) -> None:
    """What README.md's "Running it under systemd" tells an administrator to run."""
    m.put_tree(UNITS, "/root/rollbackd/systemd")
    m.put_tree(house, "/root/wheels")
    m.put(f"/root/wheels/{wheel.name}", wheel.read_bytes())
    m.ok("python3", "-m", "venv", VENV)
    m.ok(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/root/wheels",
         f"/root/wheels/{wheel.name}")
    m.ok("ln", "-s", f"{VENV}/bin/rollbackctl", "/usr/local/bin/rollbackctl")
    src = "/root/rollbackd/systemd"
    for name, dest in [("rollbackd.sysusers.conf", "/usr/lib/sysusers.d/rollbackd.conf"),
                       ("rollbackd.tmpfiles.conf", "/usr/lib/tmpfiles.d/rollbackd.conf"),
                       ("rollbackd.service", "/etc/systemd/system/rollbackd.service"),
                       ("README.md", "/usr/share/doc/rollbackd/systemd.md"),
                       ("polkit/50-rollbackd-restart-grading.rules",
                        "/etc/polkit-1/rules.d/50-rollbackd-restart-grading.rules"),
                       ("examples/grading.service", "/etc/systemd/system/grading.service")]:
        m.ok("install", "-D", "-m", "0644", f"{src}/{name}", dest)
    # The drop-in naming the deployment directory, installed unchanged from its example.
    m.ok("install", "-D", "-m", "0644", f"{src}/rollbackd.service.d/targets.conf.example",
         "/etc/systemd/system/rollbackd.service.d/targets.conf")
    m.ok("systemd-sysusers", "rollbackd.conf")
    m.ok("systemd-tmpfiles", "--create", "rollbackd.conf")


def _install_app(m: SystemdMachine, port: int) -> str:
    """The grading app as its own service, deployed from a git work tree rollbackd owns; its
    user reads every file git writes there through a default ACL. Returns the v1 commit."""
    m.ok("systemd-sysusers", "--inline", "u grading - \"grading app\" /var/lib/grading")
    m.ok("install", "-d", "-o", "rollbackd", "-g", "grading", "-m", "0750", REPO)
    m.ok("setfacl", "-m", "g:grading:rX", "-d", "-m", "g:grading:rX", REPO)
    m.ok("install", "-d", "-o", "grading", "-g", "grading", "-m", "0750", "/var/lib/grading")
    m.as_user("rollbackd", f"{VENV}/bin/python", "-c",
              f"from rollbackd.daemon.demo.sampleapp import scaffold; scaffold({REPO!r})").check()
    m.as_user("rollbackd", "git", *GIT_ID, "init", "-q", REPO).check()
    m.as_user("rollbackd", "git", *GIT_ID, "-C", REPO, "add", "-A").check()
    m.as_user("rollbackd", "git", *GIT_ID, "-C", REPO, "commit", "-q", "-m", "v1: grading app").check()
    v1 = m.as_user("rollbackd", "git", "-C", REPO, "rev-parse", "HEAD").check().out.strip()
    m.ok("python3", "-m", "venv", APP_VENV)
    m.ok(f"{APP_VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/root/wheels",
         "-r", f"{REPO}/requirements.txt")
    m.ok("mkdir", "-p", "/etc/grading")
    m.put("/etc/grading/grading.env",
          f"SAMPLEAPP_PORT={port}\nDATABASE_URL=sqlite:////var/lib/grading/grading.db\n"
          f"DB_ENCRYPTION_KEY={Fernet.generate_key().decode()}\nSAMPLEAPP_VERSION=v1\n", mode=0o640)
    m.ok("chgrp", "grading", "/etc/grading/grading.env")
    as_app = ["systemd-run", "--quiet", "--wait", "--pipe", "--property=User=grading",
              "--property=EnvironmentFile=/etc/grading/grading.env",
              f"--property=WorkingDirectory={REPO}", "--setenv=PYTHONDONTWRITEBYTECODE=1",
              f"{APP_VENV}/bin/python"]
    m.ok(*as_app, "-m", "alembic", "upgrade", "head")
    m.ok(*as_app, "seed.py", *DEMO_USER)
    return v1


@contextlib.contextmanager
def booted_with_rollbackd(client: docker.DockerClient) -> Iterator[Installed]:
    """Boot, install rollbackd and the grading app, start both; remove the container after."""
    timings: dict[str, float] = {}
    t = time.monotonic()
    image = systemd_image(client)
    timings["image"] = time.monotonic() - t
    smtp = AuthSmtpSink()
    smtp.controller.start()
    try:
        with ContainerRunner(client) as runner, tempfile.TemporaryDirectory() as tmp:
            t = time.monotonic()
            m = SystemdMachine(runner, image).boot()
            timings["boot"] = time.monotonic() - t
            t = time.monotonic()
            env = json.loads(m.ok("python3", "-c", MARKER_ENV_SCRIPT))
            wheel = project_wheel(Path(tmp))
            house = wheelhouse(wheel, env)
            timings["wheels"] = time.monotonic() - t
            t = time.monotonic()
            _install_rollbackd(m, house, wheel)
            port = free_port()
            v1 = _install_app(m, port)
            m.ok("install", "-d", "-m", "0700", "/etc/credstore")
            m.put("/etc/credstore/smtp-password", SMTP_PASSWORD + "\n", mode=0o600)
            m.put("/etc/credstore/login-probe-password", DEMO_USER[1] + "\n", mode=0o600)
            m.put("/etc/rollbackd/rollbackd.toml", config_toml(port, smtp.port), mode=0o640)
            m.ok("chgrp", "rollbackd", "/etc/rollbackd/rollbackd.toml")
            m.ok("env", "CREDENTIALS_DIRECTORY=/etc/credstore", f"{VENV}/bin/rollbackd", "check-config",
                 "/etc/rollbackd/rollbackd.toml")
            m.ok("systemctl", "daemon-reload")
            m.ok("systemctl", "enable", "--now", "grading.service")
            inst = Installed(m, port, smtp, v1, timings)
            m.wait(lambda: inst.app_health() == 200, 30, "the grading app's /health",
                   lambda: m.journal("grading.service")[-3000:])
            timings["install"] = time.monotonic() - t
            t = time.monotonic()
            started = m.run("systemctl", "enable", "--now", "rollbackd.service")
            if started.rc != 0:
                raise AssertionError(f"rollbackd.service did not start:\n{started.out}\n"
                                     + m.journal("rollbackd.service")[-4000:])
            timings["start"] = time.monotonic() - t
            yield inst
    finally:
        smtp.controller.stop()

"""What the deployment tests deploy: tiny local images, a deploy tool, configs, a socket proxy.

Images are `docker import`s of a busybox root file system (tests/infra/services.py); nothing is
pulled. Containers run with host networking and listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import NotFound

from tests.conftest import DaemonProcess
from tests.infra.services import DOCKER_SOCKET, ContainerRunner, build_local_image, free_port

HEALTH = "/cgi-bin/health"
RUN = "#!/bin/sh\nexec httpd -f -p 127.0.0.1:${PORT:?} -h /www\n"
# busybox httpd passes a CGI's own status line through unchanged.
GOOD_CGI = ("#!/bin/sh\nif [ -e /state/broken ]; then\n"
            "  printf 'HTTP/1.0 503 Service Unavailable\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
            "broken: /state/broken\\n'\nelse\n"
            "  printf 'Content-Type: text/plain\\r\\n\\r\\nok v1\\n'\nfi\n")
SLOW_CGI = "#!/bin/sh\nsleep 0.6\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok v3, slowly\\n'\n"
CRASH = ("#!/bin/sh\necho 'starting grading app v2'\n"
         "echo 'FATAL: settings module grading_settings is missing' >&2\nexit 1\n")

IMAGES: dict[str, tuple[dict[str, str], list[str]]] = {
    "v1": ({"www/cgi-bin/health": GOOD_CGI, "app/run": RUN}, ["/app/run"]),
    "v2": ({"app/run": CRASH}, ["/app/run"]),
    "v3": ({"www/cgi-bin/health": SLOW_CGI, "app/run": RUN}, ["/app/run"]),
}


def build(version: str, repository: str = "rollbackd-test/deploy-app") -> str:
    """The image of `version` (v1 good, v2 exits 1, v3 slow) under repository:version."""
    files, entrypoint = IMAGES[version]
    return build_local_image(f"{repository}:{version}", files, entrypoint)


@dataclass
class DockerApp:
    """One app container deployed the way a deploy script would, and everything cleaned after."""

    client: docker.DockerClient
    state_dir: Path
    name: str = field(default_factory=lambda: f"rbd-{uuid.uuid4().hex[:8]}-web")
    port: int = field(default_factory=free_port)
    spare_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.runner = ContainerRunner(self.client)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HEALTH}"

    def deploy(self, image: str, keep_previous: bool = False, restart: str = "no") -> str:
        """Replace the running container with one of `image`; its image id (the version).

        keep_previous: the old container is stopped and kept as `<name>.previous` (the quick
        path a rollback can start again); otherwise it is removed, as `docker rm -f` would.
        """
        old = self.container()
        if old is not None and keep_previous:
            self.remove(f"{self.name}.previous")
            old.stop(timeout=2)
            old.rename(f"{self.name}.previous")
        elif old is not None:
            old.remove(force=True)
        c = self.runner.run(image, name=self.name, environment={"PORT": str(self.port)},
                            volumes={str(self.state_dir): {"bind": "/state", "mode": "rw"}},
                            restart_policy={"Name": restart}, labels={"app": "grading"})
        return str(c.attrs["Image"])

    def container(self, name: str | None = None) -> Any:
        try:
            return self.client.containers.get(name or self.name)
        except NotFound:
            return None

    def image_id(self, name: str | None = None) -> str | None:
        c = self.container(name)
        return str(c.attrs["Image"]) if c is not None else None

    def all_names(self) -> list[str]:
        return sorted(c.name for c in self.client.containers.list(all=True)
                      if c.name == self.name or c.name.startswith(self.name + "."))

    def remove(self, name: str) -> None:
        c = self.container(name)
        if c is not None:
            with suppress(NotFound):
                c.remove(force=True)

    def cleanup(self) -> None:
        for name in self.all_names():
            self.remove(name)
        self.runner.remove_all()


class SocketProxy:
    """A unix socket that forwards to the real engine's: closing it is the engine going down."""

    def __init__(self, path: Path, target: str = DOCKER_SOCKET) -> None:
        self.path, self.target = path, target
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> SocketProxy:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()
        self.path.unlink(missing_ok=True)


POLICY = {"stable_after": "2s", "verify_timeout": "15s", "cooldown": "10s"}


def daemon_toml(state: Path, smtp_port: int, deployment: dict[str, Any],
                probes: dict[str, dict[str, Any]], **policy: Any) -> str:
    """A complete config with one target `web`; `policy` overrides [policy] keys."""

    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    text = (f'[daemon]\nstate_dir = "{state}"\nsocket = "{state / "control.sock"}"\n'
            f'metrics_address = ""\n\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
            f'from = "rollbackd@localhost"\n\n[contacts.oncall]\nemails = ["oncall@example.com"]\n\n'
            f"[policy]\n{table({**POLICY, **policy})}\n"
            f"[targets.web.deployment]\n{table(deployment)}\n")
    for name, probe in probes.items():
        text += f"[targets.web.probes.{name}]\n{table(probe)}\n"
    return text


def incidents(d: DaemonProcess) -> list[dict[str, Any]]:
    return list(d.result("incidents"))


def settled(d: DaemonProcess, states: tuple[str, ...] = ("resolved", "escalated")) -> Any:
    """The newest incident once it reached one of `states`, else None."""
    found = incidents(d)
    return found[0] if found and found[0]["state"] in states else None


def breaker(d: DaemonProcess, plan: str = "deployment_rollback") -> dict[str, Any]:
    """The target's breaker for `plan` as `rollbackctl breaker` lists it."""
    rows = [b for b in d.result("breaker") if b["target"] == "web" and b["plan"] == plan]
    return rows[0] if rows else {"mode": "closed", "failures": 0}


def assert_escalated_once(d: DaemonProcess, inc: dict[str, Any], failed_step: str) -> dict[str, Any]:
    """The incident failed at `failed_step`, counted on the breaker, escalated, and stays alone."""
    show = d.result("show", id=inc["id"])
    assert show["state"] == "escalated", show
    steps = {s["name"]: s["state"] for s in show["steps"]}
    assert steps[failed_step] == "failed", steps
    assert [s for s in show["steps"] if s["state"] == "failed"][-1]["name"] == failed_step
    events = [e["event"] for e in show["timeline"]]
    assert events.index("failed") < events.index("escalated"), events
    assert breaker(d)["failures"] == 1
    return dict(show)

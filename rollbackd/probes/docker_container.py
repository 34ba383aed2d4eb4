"""docker_container: the app's container is running, not restarting in a loop, and healthy."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, ClassVar, Literal

from pydantic import Field

from rollbackd.probes.base import BaseProbe, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom


class DockerContainerSettings(ProbeSettings):
    kind: Literal["docker_container"] = "docker_container"
    container: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    """Name of the container to watch."""
    docker_host: str = Field(default="unix:///var/run/docker.sock",
                             pattern=r"^(unix|tcp|http|https|ssh)://")
    """The engine's address, e.g. unix:///var/run/docker.sock or tcp://127.0.0.1:2375."""
    restart_growth: int = Field(default=1, ge=1)
    """Restarts between two checks that count as crash-looping."""
    require_healthy: bool = True
    """When the image has a HEALTHCHECK, a container whose health is still starting fails too."""


def check_engine_socket(host: str, timeout: float) -> None:
    """Raise OSError when a unix:// engine socket refuses, before the SDK tries.

    (The SDK leaks its socket when a unix connect fails; a plain connect first does not.)
    """
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(host.removeprefix("unix://"))


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


class DockerContainerProbe(BaseProbe[DockerContainerSettings]):
    kind: ClassVar[str] = "docker_container"

    def __init__(self, name: str, settings: DockerContainerSettings) -> None:
        super().__init__(name, settings)
        self._api: Any = None
        self._last: tuple[str, int] | None = None
        """(container id, restart count) at the previous check: growth means a restart loop."""
        import docker  # noqa: F401 - here: first imports racing in worker threads break requests

    async def run(self, started: float) -> Observation:
        return await asyncio.to_thread(self._check, started)

    def _check(self, started: float) -> Observation:
        import docker  # lazily: only daemons that watch containers load the SDK
        from docker.errors import APIError, DockerException, NotFound
        from requests.exceptions import RequestException

        s = self.settings
        try:
            check_engine_socket(s.docker_host, s.timeout)
            if self._api is None:
                self._api = docker.APIClient(base_url=s.docker_host, version="auto",
                                             timeout=s.timeout)
            found = self._api.inspect_container(s.container)
        except NotFound:
            self._last = None
            return self.fail(f"no container named {s.container}.", started,
                             Symptom.CONTAINER_DOWN)
        except APIError as exc:
            return self.error(f"docker engine at {s.docker_host} refused: "
                              f"{exc.explanation or exc}", started)
        except (DockerException, RequestException, OSError) as exc:
            # The engine being down says nothing about the app: not a failure of the target.
            return self.error(f"docker engine at {s.docker_host} is not answering "
                              f"({type(exc).__name__}); the container's state is unknown.",
                              started)
        return self._judge(found, started)

    def _judge(self, c: dict[str, Any], started: float) -> Observation:
        s, state = self.settings, c.get("State") or {}
        restarts, exit_code = int(c.get("RestartCount") or 0), int(state.get("ExitCode") or 0)
        before, self._last = self._last, (c["Id"], restarts)
        grew = restarts - before[1] if before and before[0] == c["Id"] else 0
        version = c.get("Image")
        metrics = {"restart_count": float(restarts), "exit_code": float(exit_code)}
        figures = f"image {short(version or '?')}, exit code {exit_code}, restarts {restarts}" + (
            ", OOM-killed" if state.get("OOMKilled") else "")
        status = state.get("Status", "unknown")

        def fail(why: str) -> Observation:
            return self.fail(f"{s.container} {why} ({figures}).", started,
                             Symptom.CONTAINER_DOWN, version, metrics)

        if status == "restarting" or state.get("Restarting"):
            return fail("is restarting")
        if status == "paused" or state.get("Paused"):
            return fail("is paused")
        if not state.get("Running"):
            return fail(f"is {status}" + (f": {state['Error']}" if state.get("Error") else ""))
        if grew >= s.restart_growth:
            return fail(f"restarted {grew} times since the last check: crash-looping")
        health = (state.get("Health") or {})
        if health.get("Status") == "unhealthy":
            log = (health.get("Log") or [{}])[-1]
            output = " ".join(str(log.get("Output", "")).split())[:200]
            return fail(f"is unhealthy after {health.get('FailingStreak', 0)} failed checks: "
                        f"{output or 'no output'}")
        if health.get("Status") == "starting" and s.require_healthy:
            return fail("is running but its health check is still starting")
        return self.ok(f"{s.container} is running ({figures}).", started, version, metrics)

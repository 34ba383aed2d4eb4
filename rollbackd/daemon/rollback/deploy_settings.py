"""Settings of the docker and kubernetes deployment backends: [targets.<name>.deployment]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ValidationInfo,
    model_validator,
)

from rollbackd.probes.base import PositiveDuration

DEPLOYMENT_KINDS = ("git", "docker", "kubernetes")

# Docker's own rule for container names; the dots also allow `<name>.failed.<timestamp>`.
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
# A DNS-1123 subdomain: what Kubernetes accepts as a namespace or deployment name.
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # The same rule as rollbackd.daemon.config's paths (kept here so that module can import this one).
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def deployment_kind(value: Any) -> str | None:
    """The tag of a deployment table: its `kind`, "git" when left out (as before the union)."""
    if isinstance(value, dict):
        kind = value.get("kind", "git")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


def deployment_discriminator() -> Discriminator:
    return Discriminator(
        deployment_kind, custom_error_type="deployment_kind",
        custom_error_message="kind must be one of " + ", ".join(f"'{k}'" for k in DEPLOYMENT_KINDS),
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DockerDeployment(_Frozen):
    kind: Literal["docker"] = "docker"
    container: str = Field(pattern=CONTAINER_NAME)
    """Name of the app's container; a rollback puts the known-good image back under this name."""
    docker_host: str = Field(default="unix:///var/run/docker.sock",
                             pattern=r"^(unix|tcp|http|https|ssh)://")
    """The engine's address, e.g. unix:///var/run/docker.sock or tcp://127.0.0.1:2375."""
    api_timeout: PositiveDuration = 30.0
    """Seconds one engine API call may take (stop adds stop_timeout)."""
    stop_timeout: PositiveDuration = 10.0
    """Seconds the failed container gets after SIGTERM before the engine kills it."""
    previous_container: str | None = Field(default=None, pattern=CONTAINER_NAME)
    """Where deploys keep the container they replaced (default "<container>.previous"): when it
    runs the rollback target it is started as it is instead of recreated."""
    log_lines: int = Field(default=50, ge=0, le=10_000)
    """Last log lines of the failed container kept in the incident's evidence."""
    start_grace: PositiveDuration = 1.0
    """After a start, the container must still be running this long later."""
    spare_port: int | None = Field(default=None, ge=1, le=65535)
    """Test first (perf_degraded): the port the target version answers on beside the current one;
    unset turns test-first off."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """The app's published host port; the candidate's binding of it moves to spare_port."""
    port_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable the app takes its listening port from (host networking); the
    candidate gets spare_port in it."""
    probe_host: str = "127.0.0.1"
    """Where the candidate is probed (with spare_port)."""
    probe_path: str = Field(default="/health", pattern=r"^/")
    """HTTP GET path that answers expect_status when the candidate is healthy."""
    probe_expect_status: int = Field(default=200, ge=100, le=599)
    """The status a healthy candidate answers with."""
    probe_successes: int = Field(default=3, ge=1)
    """Good answers in a row the candidate must give before the swap."""
    probe_within: PositiveDuration = 30.0
    """How long the candidate gets to give them."""
    probe_max_latency: PositiveDuration | None = None
    """A slower answer does not count as good: a slow version is replaced only by a fast one."""

    @model_validator(mode="after")
    def _test_first_needs_a_port(self) -> DockerDeployment:
        if self.spare_port is not None and self.port is None and self.port_env is None:
            raise ValueError("spare_port needs port (published port to move) or port_env")
        if self.spare_port is not None and self.spare_port == self.port:
            raise ValueError("spare_port must differ from port")
        return self

    @property
    def previous(self) -> str:
        return self.previous_container or f"{self.container}.previous"


class KubernetesDeployment(_Frozen):
    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field(default="default", pattern=K8S_NAME, max_length=63)
    """The Deployment's namespace."""
    deployment: str = Field(pattern=K8S_NAME, max_length=253)
    """The Deployment's name."""
    kubeconfig: ConfigPath | None = None
    """kubeconfig file to use; unset: the in-cluster service account."""
    context: str | None = None
    """kubeconfig context; unset: its current-context."""
    rollout_timeout: PositiveDuration = 300.0
    """How long the rollout back may take, as `kubectl rollout status --timeout`."""
    api_timeout: PositiveDuration = 10.0
    """Seconds one API request may take."""
    poll_interval: PositiveDuration = 0.5
    """Seconds between two looks at the rollout's status."""

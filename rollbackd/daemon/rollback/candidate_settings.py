"""Settings of test first on git + service: [targets.<name>.deployment.test_first]."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollbackd.daemon.rollback.deploy_settings import ConfigPath
from rollbackd.probes.base import PositiveDuration

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class GitTestFirst(BaseModel):
    """perf_degraded on a git deployment: the known-good commit is checked out in a second work
    tree and started there as a transient process on spare_port, with the service's
    environment; it is probed in the same rounds as the live version and swapped in (checkout +
    restart) only when it answered faster. Otherwise the incident escalates and nothing is
    swapped."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    start: Annotated[list[str], Field(min_length=1)]
    """argv that runs the app in the foreground from the candidate's work tree (its working
    directory), as the service's ExecStart= does, e.g. ["/srv/grading/venv/bin/python",
    "app.py"]. No shell."""
    port: int = Field(ge=1, le=65535)
    """The port the live version answers on: probed in the same rounds as the candidate."""
    spare_port: int = Field(ge=1, le=65535)
    """The port the candidate answers on (passed in port_env)."""
    port_env: EnvName
    """Environment variable the app takes its listening port from."""
    env_file: ConfigPath | None = None
    """The service's environment (as systemd's EnvironmentFile=: KEY=VALUE lines); the
    candidate gets it, then `env`, then port_env=spare_port."""
    env: dict[EnvName, str] = {}
    """More variables for the candidate (the unit's Environment= lines)."""
    probe_host: str = "127.0.0.1"
    """Where both versions are probed."""
    probe_path: str = Field(default="/health", pattern=r"^/")
    """HTTP GET path probed on both versions."""
    probe_expect_status: int = Field(default=200, ge=100, le=599)
    """The status a healthy candidate answers with."""
    samples: int = Field(default=5, ge=1, le=100)
    """Rounds judged: each round asks the live version once and the candidate once; the
    candidate must answer expect_status in all of them."""
    max_latency: PositiveDuration | None = None
    """The latency baseline's limit (the health probe's max_latency, or its baseline p95 x
    factor): the candidate's p95 must be at or below it. Unset: only the live comparison."""
    faster_ratio: float = Field(default=0.8, gt=0, le=1)
    """The candidate's p95 must be at most this fraction of the live version's p95 measured in
    the same rounds: "faster", not "as slow"."""
    start_within: PositiveDuration = 30.0
    """How long the candidate gets to listen on spare_port."""
    probe_within: PositiveDuration = 30.0
    """How long the candidate gets to give `samples` good answers in a row."""
    stop_timeout: PositiveDuration = 5.0
    """Seconds the candidate gets after SIGTERM before SIGKILL."""

    @model_validator(mode="after")
    def _two_ports(self) -> GitTestFirst:
        if self.spare_port == self.port:
            raise ValueError("spare_port must differ from port")
        return self

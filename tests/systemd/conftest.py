"""Fixtures for the systemd tests. `installed` (module scope): a container booting systemd as
PID 1 with rollbackd and the sample app installed and running (tests/systemd/install.py)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.systemd.install import Installed, booted_with_rollbackd


@pytest.fixture(scope="module")
def installed(docker: docker.DockerClient) -> Iterator[Installed]:
    with booted_with_rollbackd(docker) as inst:
        yield inst
    print("\nsystemd container, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in inst.timings.items()))

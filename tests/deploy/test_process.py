"""What each backend tells the start period of the app's process, read from real parts: a real
process and its pidfile, a real container on the engine, pods of the Kubernetes fake."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollbackd.daemon.rollback.deploy_settings import DockerDeployment, KubernetesDeployment
from rollbackd.daemon.rollback.docker import DockerExecutor, engine_time
from rollbackd.daemon.rollback.kubernetes import KubernetesExecutor
from rollbackd.daemon.rollback.pidfile import pidfile_process
from tests.deploy.apps import build
from tests.fakes.k8s_api import FakeKubernetes
from tests.infra.services import DOCKER_SOCKET, ContainerRunner


def test_a_pidfile_tells_a_running_process_its_age_and_its_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    assert pidfile_process(pidfile).running is False  # no pidfile: not running
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile.write_text(f"{child.pid}\n")
        time.sleep(1.5)
        found = pidfile_process(pidfile)
        assert found.running is True and found.what == f"pid {child.pid}"
        assert found.started_ago is not None and 1 <= found.started_ago < 30
    finally:
        child.kill()
        child.wait()
    gone = pidfile_process(pidfile)
    assert gone.running is False and str(child.pid) in gone.what
    pidfile.write_text("not a pid\n")
    assert pidfile_process(pidfile).running is None  # cannot tell


def test_the_engine_tells_a_container_running_since_and_stopped(
        docker_containers: ContainerRunner) -> None:
    tag = build("v1")
    c = docker_containers.run(tag, name=f"rbd-process-{docker_containers.run_id[-8:]}",
                              entrypoint=["/bin/busybox", "sleep", "60"])
    ex = DockerExecutor(DockerDeployment(container=str(c.name),
                                         docker_host=f"unix://{DOCKER_SOCKET}"))
    time.sleep(1.5)
    found = asyncio.run(ex.process())
    assert found.running is True and found.what.startswith(f"container {c.name}")
    assert found.started_ago is not None and 1 <= found.started_ago < 60
    c.stop(timeout=1)
    stopped = asyncio.run(ex.process())
    assert stopped.running is False and "exited" in stopped.what
    c.remove()
    assert asyncio.run(ex.process()).running is False  # no container of that name


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2026-12-07T20:11:22.123456789Z", "2026-12-07 20:11:22.123456+00:00"),
    ("2026-12-07T20:11:22Z", "2026-12-07 20:11:22+00:00"),
    ("0001-01-01T00:00:00Z", "None"),
])
def test_engine_time(stamp: str, expected: str) -> None:
    assert str(engine_time(stamp)) == expected


def test_the_api_tells_running_pods_and_crash_looping_ones(tmp_path: Path) -> None:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", "registry.local/grading:1", replicas=1)
        settings = KubernetesDeployment(deployment="web",
                                        kubeconfig=fake.kubeconfig(tmp_path / "kubeconfig"))
        ex = KubernetesExecutor(settings)
        found = asyncio.run(ex.process())
        assert found.running is True and found.what.startswith("pod web-")
        assert found.started_ago is not None and found.started_ago < 60
        fake.cluster.failing_images["registry.local/grading:2"] = "CrashLoopBackOff"
        fake.set_image("web", "registry.local/grading:2")
        looping = asyncio.run(ex.process())
        assert looping.running is False and "CrashLoopBackOff" in looping.what

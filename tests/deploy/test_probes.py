"""docker_container and k8s_deployment probes against a real engine and the fake API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from rollbackd.probes.docker_container import DockerContainerProbe, DockerContainerSettings
from rollbackd.probes.k8s_deployment import K8sDeploymentProbe, K8sDeploymentSettings
from rollbackd.probes.observation import Observation, Status, Symptom
from tests.conftest import wait_for
from tests.deploy.apps import DockerApp, build
from tests.fakes.k8s_api import FakeKubernetes
from tests.infra.services import DOCKER_SOCKET

HOST = f"unix://{DOCKER_SOCKET}"


@pytest.fixture
def app(docker: docker.DockerClient, tmp_path: Path) -> Iterator[DockerApp]:
    a = DockerApp(docker, tmp_path / "appstate")
    yield a
    a.cleanup()


def container_probe(name: str, host: str = HOST) -> DockerContainerProbe:
    return DockerContainerProbe("container", DockerContainerSettings(
        container=name, docker_host=host, timeout=5))


async def until(probe: DockerContainerProbe | K8sDeploymentProbe, status: Status,
                timeout: float = 15) -> Observation:
    deadline = time.monotonic() + timeout
    while True:
        obs = await probe.check()
        if obs.status is status or time.monotonic() > deadline:
            return obs
        time.sleep(0.2)


async def test_container_that_exits_1_fails_and_passes_again_after_repair(app: DockerApp) -> None:
    probe = container_probe(app.name)
    good = app.deploy(build("v1"))
    ok = await until(probe, Status.OK)
    assert ok.status is Status.OK and ok.version == good and ok.symptom is None

    bad = app.deploy(build("v2"))
    obs = await until(probe, Status.FAIL)
    assert obs.status is Status.FAIL and obs.symptom is Symptom.CONTAINER_DOWN
    assert "is exited" in obs.detail and "exit code 1" in obs.detail
    assert obs.version == bad and obs.metrics["exit_code"] == 1.0

    app.deploy(build("v1"))
    assert (await until(probe, Status.OK)).status is Status.OK


async def test_restart_loop_is_crash_looping(app: DockerApp) -> None:
    probe = container_probe(app.name)
    app.deploy(build("v2"), restart="always")
    seen = []
    for _ in range(20):  # restarting, or running again with a grown restart count
        obs = await probe.check()
        seen.append(obs)
        if obs.status is Status.FAIL and ("restarting" in obs.detail or "crash-looping"
                                          in obs.detail):
            break
        time.sleep(0.2)
    assert seen[-1].status is Status.FAIL, [o.detail for o in seen]
    assert seen[-1].symptom is Symptom.CONTAINER_DOWN
    assert app.container().attrs["RestartCount"] >= 1


async def test_unhealthy_container_fails(app: DockerApp, docker: docker.DockerClient) -> None:
    probe = container_probe(app.name)
    app.runner.run(build("v1"), name=app.name, environment={"PORT": str(app.port)},
                   healthcheck={"test": ["CMD", "false"], "interval": 100_000_000,
                                "timeout": 1_000_000_000, "retries": 1})
    obs = await probe.check()
    assert obs.status is Status.FAIL
    assert "health check is still starting" in obs.detail or "is unhealthy" in obs.detail
    wait_for(lambda: app.container().attrs["State"]["Health"]["Status"] == "unhealthy", 15,
             "unhealthy")
    obs = await probe.check()
    assert "is unhealthy after" in obs.detail and obs.symptom is Symptom.CONTAINER_DOWN


async def test_missing_container_fails_and_dead_engine_is_an_error(tmp_path: Path) -> None:
    obs = await container_probe("rbd-no-such-container").check()
    assert obs.status is Status.FAIL and "no container named" in obs.detail
    obs = await container_probe("web", f"unix://{tmp_path / 'nothing.sock'}").check()
    assert obs.status is Status.ERROR and obs.symptom is Symptom.PROBE_ERROR
    assert "is not answering" in obs.detail and "state is unknown" in obs.detail


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", "registry.local/grading:1", progress_deadline=1)
        yield fake


def deployment_probe(k8s: FakeKubernetes, tmp_path: Path, name: str = "web") -> K8sDeploymentProbe:
    return K8sDeploymentProbe("deploy", K8sDeploymentSettings(
        deployment=name, kubeconfig=k8s.kubeconfig(tmp_path / "kubeconfig"), timeout=2))


async def test_deployment_crash_loop_then_progress_deadline_then_repair(
    k8s: FakeKubernetes, tmp_path: Path
) -> None:
    probe = deployment_probe(k8s, tmp_path)
    ok = await until(probe, Status.OK)
    assert ok.status is Status.OK and ok.version == "1" and "2/2 available" in ok.detail

    k8s.cluster.failing_images["registry.local/grading:2"] = "CrashLoopBackOff"
    k8s.set_image("web", "registry.local/grading:2")
    obs = await probe.check()
    assert obs.status is Status.FAIL and obs.symptom is Symptom.CONTAINER_DOWN
    assert "CrashLoopBackOff" in obs.detail and obs.version == "2"
    time.sleep(1.3)
    obs = await probe.check()
    assert "exceeded its progress deadline" in obs.detail
    assert "timed out progressing" in obs.detail

    k8s.set_image("web", "registry.local/grading:1")
    ok = await until(probe, Status.OK)
    assert ok.status is Status.OK and ok.version == "3"


async def test_deployment_image_pull_backoff_and_missing_replicas(
    k8s: FakeKubernetes, tmp_path: Path
) -> None:
    probe = deployment_probe(k8s, tmp_path)
    k8s.cluster.failing_images["registry.local/grading:typo"] = "ImagePullBackOff"
    k8s.set_image("web", "registry.local/grading:typo")
    obs = await probe.check()
    assert obs.status is Status.FAIL and "ImagePullBackOff" in obs.detail
    with k8s.cluster.lock:  # the old pods die too: fewer replicas than wanted
        k8s.cluster.failing_images.pop("registry.local/grading:typo")
        dep = k8s.cluster.deployments[("default", "web")]
        for rs in k8s.cluster.owned_sets(dep):
            for pod in k8s.cluster.pods_of(rs):
                k8s.cluster.pods.pop(("default", pod["metadata"]["name"]))
    obs = await probe.check()
    assert obs.status is Status.FAIL and "only 0 of 2 replicas available" in obs.detail


async def test_deployment_missing_fails_and_api_down_is_an_error(
    k8s: FakeKubernetes, tmp_path: Path
) -> None:
    obs = await deployment_probe(k8s, tmp_path, "nope").check()
    assert obs.status is Status.FAIL and "does not exist" in obs.detail
    probe = deployment_probe(k8s, tmp_path)
    assert (await until(probe, Status.OK)).status is Status.OK
    k8s.stop()
    obs = await probe.check()
    assert obs.status is Status.ERROR and "is not answering" in obs.detail

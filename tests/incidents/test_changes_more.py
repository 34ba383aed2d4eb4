"""What changed, beyond git: Docker images from a real engine, Kubernetes pod templates from the
fake API, and the log lines new since the onset from a real log file (never a secret value)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.incidents.changes import suspects
from rollbackd.daemon.incidents.log_news import new_lines, normalize
from rollbackd.daemon.incidents.release_diff import image_changes, template_changes
from rollbackd.daemon.rollback.deploy_settings import DockerDeployment, KubernetesDeployment
from rollbackd.daemon.rollback.docker import DockerExecutor
from rollbackd.daemon.rollback.kubernetes import KubernetesExecutor
from rollbackd.policies.ledger import LedgerEntry
from tests.deploy.apps import build
from tests.fakes.k8s_api import FakeKubernetes
from tests.infra.services import DOCKER_SOCKET

ONSET = datetime(2026, 12, 7, 20, 0, 0, tzinfo=UTC)
SECRET = "s3cr3t-Value-9"


def at(minutes: float) -> str:
    return (ONSET + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3] + "Z"


def write_log(path: Path) -> None:
    lines = [
        f"{at(-90)} ERROR app: too old to count as before {SECRET}",
        f"{at(-30)} INFO app: GET /api/grades/17 200 in 12ms",
        f"{at(-20)} WARNING app: slow query took 812ms (request 5f3a9c2e)",
        f"{at(-5)} INFO app: GET /api/grades/4 200 in 9ms",
        f"{at(0.1)} INFO app: GET /api/grades/99 200 in 31ms",  # same shape: not new
        f"{at(0.2)} WARNING app: slow query took 2950ms (request 77bd01aa)",  # same shape
        f"{at(0.3)} ERROR app: login failed: no such column: users.password_hash",
        "Traceback (most recent call last):",  # takes the time of the line above
        f"{at(0.4)} ERROR app: connecting with password={SECRET} to the ledger",
        f"{at(0.5)} ERROR app: login failed: no such column: users.password_hash",  # repeat
        f"{at(0.6)} ERROR app: upstream said Authorization: Bearer abc.{SECRET}",
        f"{at(0.7)} ERROR app: a fourth new line, past the limit",
    ]
    path.write_text("\n".join(lines) + "\n")


def test_normalize_ignores_numbers_and_ids() -> None:
    assert normalize(f"{at(1)} GET /api/grades/17 200 in 12ms (req 5f3a9c2e)") == \
        normalize(f"{at(2)} GET /api/grades/4 200 in 9ms (req 77bd01aa)")


def test_new_log_lines_after_the_onset_are_found_and_secrets_masked(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write_log(log)
    found = new_lines(log.read_text().splitlines(), ONSET)
    assert found == [
        f"{at(0.3)} ERROR app: login failed: no such column: users.password_hash",
        "Traceback (most recent call last):",
        f"{at(0.4)} ERROR app: connecting with password=<hidden> to the ledger",
    ]
    assert SECRET not in repr(new_lines(log.read_text().splitlines(), ONSET, most=10))


def config_with_log(tmp_path: Path, log: Path) -> Any:
    text = f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
socket = "{tmp_path / 'state' / 'control.sock'}"

[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"

[targets.web.probes.errors]
kind = "log_errors"
path = "{log}"
"""
    return parse_config(text, str(tmp_path / "rollbackd.toml")).targets["web"]


def test_suspects_name_the_new_log_lines_and_how_they_were_found(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write_log(log)
    found = asyncio.run(suspects(config_with_log(tmp_path, log), [], None, onset=ONSET))
    how = ("app.log after 20:00:00 UTC, not among the hour before (numbers and ids ignored; "
           "secrets masked)")
    assert [(c["kind"], c["how_found"]) for c in found] == [("log", how)] * 3
    assert found[0]["text"].endswith("no such column: users.password_hash")
    assert SECRET not in repr(found)


def ledger(good: str, bad: str) -> list[LedgerEntry]:
    now = datetime.now(UTC)
    return [LedgerEntry(good, now - timedelta(hours=1), known_good_at=now - timedelta(minutes=50)),
            LedgerEntry(bad, now)]


def test_docker_images_old_and_new_from_the_engine(docker: docker_sdk.DockerClient) -> None:
    tags = {v: build(v) for v in ("v1", "v2")}
    ids = {v: docker.images.get(t).id for v, t in tags.items()}
    ex = DockerExecutor(DockerDeployment(container="rbd-changes-none",
                                         docker_host=f"unix://{DOCKER_SOCKET}"))
    found = asyncio.run(image_changes(ex, ids["v1"], ids["v2"]))
    assert [c.line() for c in found] == [
        f"[image] rollbackd-test/deploy-app:v1 (id {ids['v1'][:19]}, no registry digest) -> "
        f"rollbackd-test/deploy-app:v2 (id {ids['v2'][:19]}, no registry digest) "
        "(docker image inspect on the engine)"]
    gone = "sha256:" + "0" * 64
    (line,) = [c.line() for c in asyncio.run(image_changes(ex, gone, ids["v2"]))]
    assert line.startswith("[image] sha256:000000000000 (no longer on the engine) -> ")


def test_kubernetes_template_fields_from_the_replica_sets(tmp_path: Path) -> None:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", "registry.local/grading:1", replicas=1)
        fake.set_image("web", "registry.local/grading:2")
        settings = KubernetesDeployment(deployment="web",
                                        kubeconfig=fake.kubeconfig(tmp_path / "kubeconfig"))
        found = asyncio.run(template_changes(KubernetesExecutor(settings), "1", "2"))
        assert [c.line() for c in found] == [
            "[template] containers[app].image: registry.local/grading:1 -> "
            "registry.local/grading:2 (pod templates of revisions 1 and 2 (ReplicaSets from the "
            "API))"]
        found = asyncio.run(suspects(
            parse_config(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
[targets.web.deployment]
kind = "kubernetes"
deployment = "web"
kubeconfig = "{tmp_path / 'kubeconfig'}"
[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
""", str(tmp_path / "rollbackd.toml")).targets["web"], ledger("1", "2"), "2",
            executor=KubernetesExecutor(settings)))
        assert [c["kind"] for c in found] == ["release", "template"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param({"spec": {"containers": [{"name": "app", "env": [{"name": "DB", "value": "a"}]}]}},
                 {"spec": {"containers": [{"name": "app", "env": [{"name": "DB", "value": "b"},
                                                                  {"name": "NEW", "value": "x"}]}]}},
                 ["containers[app].env[DB].value changed (value not shown)",
                  "containers[app].env[NEW].value added"], id="env-values-never-shown"),
    pytest.param({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "1Gi"}}}]}},
                 {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}},
                 ["containers[app].resources.limits.memory: 1Gi -> 256Mi"], id="memory-limit"),
])
def test_template_diff(old: dict[str, Any], new: dict[str, Any], expected: list[str]) -> None:
    from rollbackd.daemon.incidents.release_diff import template_diff

    assert template_diff(old, new) == expected

"""The fake API answers what the official client's typed models accept, on the real paths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.fakes.k8s_api import FakeKubernetes, label_matcher


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", "registry.local/grading:1", replicas=2)
        yield fake


@pytest.fixture
def api(k8s: FakeKubernetes, tmp_path: Path) -> Iterator[Any]:
    with config.new_client_from_config(config_file=str(k8s.kubeconfig(tmp_path / "kc"))) as c:
        yield c


def test_typed_models_accept_every_object(k8s: FakeKubernetes, api: Any) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    time.sleep(0.4)  # the pods get ready
    dep = apps.read_namespaced_deployment("web", "default")
    assert isinstance(dep, client.V1Deployment)
    assert dep.metadata.generation == 1 and dep.metadata.uid and dep.metadata.resource_version
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert dep.status.observed_generation == 1 and dep.status.available_replicas == 2
    assert {c.type: c.reason for c in dep.status.conditions} == {
        "Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}

    rss = apps.list_namespaced_replica_set("default", label_selector="app=web")
    assert isinstance(rss, client.V1ReplicaSetList) and len(rss.items) == 1
    rs = rss.items[0]
    assert rs.metadata.owner_references[0].uid == dep.metadata.uid
    assert rs.metadata.owner_references[0].controller is True
    assert rs.spec.template.metadata.labels["pod-template-hash"] in rs.metadata.name

    pods = core.list_namespaced_pod("default", label_selector="app=web")
    assert isinstance(pods, client.V1PodList) and len(pods.items) == 2
    assert all(p.status.container_statuses[0].ready for p in pods.items)
    assert pods.items[0].metadata.owner_references[0].kind == "ReplicaSet"


def test_patch_types_the_client_sends(k8s: FakeKubernetes, api: Any) -> None:
    apps = client.AppsV1Api(api)
    dep = apps.patch_namespaced_deployment(
        "web", "default", {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "registry.local/grading:2"}]}}}},
        _content_type="application/strategic-merge-patch+json")
    assert dep.metadata.generation == 2
    assert dep.spec.template.spec.containers[0].image == "registry.local/grading:2"
    assert dep.spec.template.spec.containers[0].ports[0].container_port == 8080  # merged by name
    dep = apps.patch_namespaced_deployment(  # a list body: JSON patch, the client's default
        "web", "default", [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert dep.spec.replicas == 3 and dep.metadata.generation == 3
    assert k8s.requests[-1][2] == "application/json-patch+json"
    dep = apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"x": "y"}}},
                                           _content_type="application/merge-patch+json")
    assert dep.metadata.generation == 3  # metadata only: no new generation
    time.sleep(0.2)
    assert apps.read_namespaced_deployment("web", "default").metadata.annotations[
        "deployment.kubernetes.io/revision"] == "2"


def test_errors_are_status_objects(k8s: FakeKubernetes, api: Any, tmp_path: Path) -> None:
    apps = client.AppsV1Api(api)
    with pytest.raises(ApiException) as info:
        apps.read_namespaced_deployment("nope", "default")
    assert info.value.status == 404 and '"reason": "NotFound"' in info.value.body
    with pytest.raises(ApiException) as info:
        apps.patch_namespaced_deployment("web", "default", {"spec": {}},
                                         _content_type="application/json")
    assert info.value.status == 415
    k8s.token = "another"
    with pytest.raises(ApiException) as info:
        apps.read_namespaced_deployment("web", "default")
    assert info.value.status == 401


@pytest.mark.parametrize(("selector", "labels", "match"), [
    pytest.param("app=web", {"app": "web"}, True, id="equals"),
    pytest.param("app==web,tier=front", {"app": "web"}, False, id="and"),
    pytest.param("app!=web", {"app": "api"}, True, id="not-equals"),
    pytest.param("app in (web, api)", {"app": "api"}, True, id="in"),
    pytest.param("app notin (web)", {}, True, id="notin-missing-key"),
    pytest.param("app,!canary", {"app": "x", "canary": "1"}, False, id="exists-not-exists"),
    pytest.param("", {"a": "b"}, True, id="empty"),
])
def test_label_selectors(selector: str, labels: dict[str, str], match: bool) -> None:
    assert label_matcher(selector)(labels) is match

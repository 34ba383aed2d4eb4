"""The executors' pure rules: what a recreated container keeps, kubectl's undo and status."""

from __future__ import annotations

from typing import Any

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.deploy_settings import DockerDeployment
from rollbackd.daemon.rollback.docker import on_spare_port, recreate_body
from rollbackd.daemon.rollback.kubernetes import rollback_patch, rollout_status, rs_for_revision
from rollbackd.probes.k8s_deployment import selector_string

IMAGE = {"Config": {"Env": ["PATH=/bin", "LANG=C"], "Entrypoint": ["/app/run"], "Cmd": None,
                    "WorkingDir": "/", "Labels": {"org.image": "v2"}}}
CONTAINER = {
    "Id": "0123456789abcdef", "Name": "/web",
    "Config": {"Hostname": "0123456789ab", "Env": ["PATH=/bin", "LANG=C", "PORT=8080",
                                                   "DB_URL=sqlite:///x"],
               "Entrypoint": ["/app/run"], "Cmd": ["--workers", "2"], "WorkingDir": "/srv",
               "User": "app", "Labels": {"org.image": "v2", "app": "grading"}},
    "HostConfig": {"NetworkMode": "appnet", "Binds": ["/data:/data:rw"],
                   "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
                   "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}},
    "NetworkSettings": {"Networks": {"appnet": {"Aliases": ["web", "0123456789ab"],
                                                "IPAMConfig": None, "Links": None}}},
}


def test_recreate_keeps_what_the_container_was_given_and_drops_image_defaults() -> None:
    body = recreate_body(CONTAINER, IMAGE, "sha256:good")
    assert body["Image"] == "sha256:good"
    assert body["Env"] == ["PORT=8080", "DB_URL=sqlite:///x"]  # env files are inlined env
    assert "Entrypoint" not in body  # the image's own: the good image brings its own
    assert body["Cmd"] == ["--workers", "2"] and body["WorkingDir"] == "/srv"
    assert body["User"] == "app"
    assert body["Labels"] == {"app": "grading"}
    assert "Hostname" not in body  # the engine's default (the id), not a setting
    assert body["HostConfig"] == CONTAINER["HostConfig"]  # ports, mounts, restart policy
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"appnet": {
        "Aliases": ["web"], "IPAMConfig": None, "Links": None}}}


def test_recreate_without_the_old_image_takes_the_new_images_defaults() -> None:
    body = recreate_body(CONTAINER, None, "sha256:good")
    assert {"Entrypoint", "Cmd", "WorkingDir", "User"}.isdisjoint(body)
    assert "PORT=8080" in body["Env"]


def test_candidate_moves_to_the_spare_port_and_never_restarts() -> None:
    s = DockerDeployment(container="web", spare_port=18080, port=8080, port_env="PORT")
    body = on_spare_port(recreate_body(CONTAINER, IMAGE, "sha256:good"), s, "web")
    assert "PORT=18080" in body["Env"] and "PORT=8080" not in body["Env"]
    assert body["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] == "18080"
    assert body["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert CONTAINER["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"  # not mutated


def rs(name: str, revision: str, history: str = "", **notes: str) -> dict[str, Any]:
    annotations = {"deployment.kubernetes.io/revision": revision, **notes}
    if history:
        annotations["deployment.kubernetes.io/revision-history"] = history
    return {"metadata": {"name": name, "annotations": annotations},
            "spec": {"template": {"metadata": {"labels": {"app": "web",
                                                          "pod-template-hash": name}},
                                  "spec": {"containers": [{"name": "app", "image": name}]}}}}


def test_revision_is_found_in_the_history_of_a_reused_replica_set() -> None:
    sets = [rs("a", "3", history="1"), rs("b", "2")]
    assert rs_for_revision(sets, "1") is sets[0] and rs_for_revision(sets, "2") is sets[1]
    assert rs_for_revision(sets, "4") is None


def test_undo_patch_is_kubectls() -> None:
    dep = {"metadata": {"annotations": {"deployment.kubernetes.io/revision": "2",
                                        "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                        "team": "old"}}}
    patch = rollback_patch(dep, rs("a", "1", **{"team": "new", "deployment.kubernetes.io/"
                                                "desired-replicas": "9"}))
    assert [op["path"] for op in patch] == ["/spec/template", "/metadata/annotations"]
    assert patch[0]["value"]["metadata"]["labels"] == {"app": "web"}
    assert patch[1]["value"] == {"deployment.kubernetes.io/revision": "2", "team": "new",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{}"}


def dep(generation: int = 2, observed: int = 2, want: int = 2, reason: str = "",
        **status: int) -> dict[str, Any]:
    conditions = [{"type": "Progressing", "status": "True", "reason": reason}] if reason else []
    return {"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": want},
            "status": {"observedGeneration": observed, "conditions": conditions, **status}}


@pytest.mark.parametrize(("d", "done", "says"), [
    pytest.param(dep(3, 2), False, "spec update to be observed", id="not-observed"),
    pytest.param(dep(updatedReplicas=1, replicas=2), False, "1 out of 2 new", id="updating"),
    pytest.param(dep(updatedReplicas=2, replicas=3), False, "1 old replicas", id="old-pending"),
    pytest.param(dep(updatedReplicas=2, replicas=2, availableReplicas=1), False,
                 "1 of 2 updated replicas are available", id="unavailable"),
    pytest.param(dep(updatedReplicas=2, replicas=2, availableReplicas=2), True,
                 "successfully rolled out", id="done"),
    pytest.param(dep(3, 2, reason="ProgressDeadlineExceeded"), False, "observed",
                 id="deadline-of-an-unobserved-generation-is-old-news"),
])
def test_rollout_status_is_kubectls(d: dict[str, Any], done: bool, says: str) -> None:
    assert rollout_status(d)[0] is done and says in rollout_status(d)[1]


def test_rollout_status_fails_past_the_progress_deadline() -> None:
    with pytest.raises(StepFailed, match="exceeded its progress deadline"):
        rollout_status(dep(reason="ProgressDeadlineExceeded", updatedReplicas=1))


def test_selector_string() -> None:
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "t", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "Exists"},
        {"key": "d", "operator": "DoesNotExist"}]}) == "a=1,b=2,t in (x,y),c,!d"


PROBE = '[targets.t.probes.h]\nkind = "http_health"\nurl = "http://127.0.0.1:1/"\n'


@pytest.mark.parametrize(("table", "error"), [
    pytest.param('kind = "docker"\n', "targets.t.deployment.container: required key is missing",
                 id="docker-without-container"),
    pytest.param('kind = "nomad"\n', "targets.t.deployment: kind must be one of 'git', 'docker',"
                 " 'kubernetes'", id="unknown-kind"),
    pytest.param('kind = "docker"\ncontainer = "web"\nspare_port = 9\n',
                 "targets.t.deployment: spare_port needs port", id="spare-port-alone"),
    pytest.param('kind = "kubernetes"\ndeployment = "Web"\n',
                 "targets.t.deployment.deployment: does not have the expected form",
                 id="bad-k8s-name"),
])
def test_deployment_config_errors_name_the_key(table: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PROBE + "[targets.t.deployment]\n" + table)
    assert info.value.errors[0].startswith(error), info.value.errors


def test_deployment_kinds_parse() -> None:
    for table, kind in [('repo = "/srv/app"\nrestart = ["true"]\n', "git"),
                        ('kind = "docker"\ncontainer = "web"\n', "docker"),
                        ('kind = "kubernetes"\ndeployment = "web"\n', "kubernetes")]:
        target = parse_config(PROBE + "[targets.t.deployment]\n" + table).targets["t"]
        assert target.deployment is not None and target.deployment.kind == kind

"""Docker rollback end to end: a real engine, local images, a real daemon process and SMTP server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from rollbackd.daemon.rollback.base import Effect, Found, StepContext
from rollbackd.daemon.rollback.deploy_settings import DockerDeployment
from rollbackd.daemon.rollback.docker import DockerExecutor
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Component, Plan, PlanKind
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.deploy.apps import (
    HEALTH,
    DockerApp,
    SocketProxy,
    assert_escalated_once,
    build,
    daemon_toml,
    incidents,
    settled,
)
from tests.infra.services import DOCKER_SOCKET

pytestmark = pytest.mark.e2e

BACKEND_STEPS = ["stop_failed_container", "start_known_good"]
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]


@pytest.fixture(scope="session")
def images(docker: docker.DockerClient) -> dict[str, str]:
    return {v: build(v) for v in ("v1", "v2", "v3")}


@pytest.fixture
def app(docker: docker.DockerClient, tmp_path: Path) -> Iterator[DockerApp]:
    a = DockerApp(docker, tmp_path / "appstate")
    yield a
    a.cleanup()


def config(app: DockerApp, tmp_path: Path, smtp: SmtpSink, host: str = f"unix://{DOCKER_SOCKET}",
           deployment: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
           **policy: Any) -> str:
    return daemon_toml(
        tmp_path / "state", smtp.port,
        {"kind": "docker", "container": app.name, "docker_host": host, "stop_timeout": "2s",
         "start_grace": "500ms", **(deployment or {})},
        {"health": {"kind": "http_health", "url": app.url, "interval": "500ms", "timeout": "2s",
                    "failure_threshold": 3, **(health or {})},
         "container": {"kind": "docker_container", "container": app.name, "docker_host": host,
                       "interval": "500ms", "timeout": "2s", "failure_threshold": 2}},
        **policy)


def start_on_v1(app: DockerApp, images: dict[str, str], start: Callable[..., DaemonProcess],
                text: str) -> tuple[DaemonProcess, str]:
    good = app.deploy(images["v1"])
    d = start(text)
    wait_for(lambda: known_good(d, good), 20, f"v1 known-good\n{d.log_text()}")
    return d, good


def assert_timeline(show: dict[str, Any]) -> None:
    events = [e["event"] for e in show["timeline"]]
    for earlier, later in [("detected", "started"), ("started", "rolled_back"),
                           ("rolled_back", "verified")]:
        assert events.index(earlier) < events.index(later), events


def test_crashing_image_is_replaced_by_the_known_good_one_with_the_same_configuration(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d, good = start_on_v1(app, images, start_daemon, config(app, tmp_path, smtp))
    bad = app.deploy(images["v2"])  # `docker rm -f` + `docker run`: no previous container kept

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert show["incident_class"] == "app_down"
    assert (show["from_version"], show["to_version"]) == (bad, good)
    assert [(s["name"], s["state"]) for s in show["steps"]] == [
        (n, "done") for n in [*CHECKLIST, *BACKEND_STEPS, "verify"]]
    assert_timeline(show)

    # Evidence: the failed container as it was, with its last log lines; no env values.
    dep = show["evidence"]["deployment"]
    assert dep["image"] == bad and dep["state"] == "exited" and dep["exit_code"] == 1
    assert "FATAL: settings module grading_settings is missing" in dep["logs"]
    assert dep["env_keys"] == ["PORT"] and str(app.port) not in str(dep["env_keys"])
    # What changed: the images as the engine has them (the monitor's what_changed).
    images_seen = [c["text"] for c in show["evidence"]["changes"] if c["kind"] == "image"]
    assert len(images_seen) == 1 and images_seen[0].startswith(
        "rollbackd-test/deploy-app:v1 (id ") and " -> rollbackd-test/deploy-app:v2 (id " in \
        images_seen[0], show["evidence"]["changes"]

    # The known-good image runs under the same name with the same configuration ...
    assert httpx.get(app.url, timeout=5).text.strip() == "ok v1"
    c = app.container()
    assert c.attrs["Image"] == good
    assert f"PORT={app.port}" in c.attrs["Config"]["Env"]
    assert c.attrs["Config"]["Labels"]["app"] == "grading"
    assert c.attrs["HostConfig"]["NetworkMode"] == "host"
    assert c.attrs["HostConfig"]["Binds"] == [f"{app.state_dir}:/state:rw"]
    assert c.attrs["Config"]["Entrypoint"] == ["/app/run"]
    # ... and the failed one is kept, stopped, and will not come back with the engine.
    failed = [n for n in app.all_names() if ".failed." in n]
    assert len(failed) == 1 and re.fullmatch(rf"{app.name}\.failed\.\d{{8}}T\d{{6}}Z", failed[0])
    kept = app.container(failed[0])
    assert kept.attrs["Image"] == bad and kept.status == "exited"
    assert kept.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    detail = {s["name"]: s["detail"] for s in show["steps"]}
    assert failed[0] in detail["stop_failed_container"]
    assert "recreated" in detail["start_known_good"]

    ledger = {e["version"]: e["state"] for e in d.result("known-good", target="web")}
    assert ledger[bad] == "bad" and ledger[good] == "known-good"
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")
    assert "resolved" in smtp.subjects[1]


def test_quick_path_starts_the_previous_container_again(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d, good = start_on_v1(app, images, start_daemon, config(app, tmp_path, smtp))
    previous_id = app.container().id
    bad = app.deploy(images["v2"], keep_previous=True)
    assert app.container(f"{app.name}.previous") is not None

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert (show["from_version"], show["to_version"]) == (bad, good)
    assert app.container().id == previous_id  # the very container, not a new one
    assert app.container(f"{app.name}.previous") is None
    assert "previous container" in {s["name"]: s["detail"] for s in show["steps"]}[
        "start_known_good"]
    assert httpx.get(app.url, timeout=5).status_code == 200


def test_slow_image_is_tested_beside_the_current_one_before_the_swap(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    text = config(app, tmp_path, smtp, deployment={
        "spare_port": app.spare_port, "port_env": "PORT", "probe_path": HEALTH,
        "probe_max_latency": "300ms", "probe_within": "10s"}, health={"max_latency": "300ms"})
    d, good = start_on_v1(app, images, start_daemon, text)
    slow = app.deploy(images["v3"])
    assert httpx.get(app.url, timeout=5).text.strip() == "ok v3, slowly"

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert show["incident_class"] == "perf_degraded"
    assert (show["from_version"], show["to_version"]) == (slow, good)
    assert [s["name"] for s in show["steps"]] == [
        *CHECKLIST, "start_beside", "probe_beside", "remove_beside", *BACKEND_STEPS, "verify"]
    detail = {s["name"]: s["detail"] for s in show["steps"]}
    assert f"port {app.spare_port}" in detail["start_beside"]
    assert "3 times in a row" in detail["probe_beside"]
    assert app.container(f"{app.name}.candidate") is None
    assert httpx.get(app.url, timeout=5).text.strip() == "ok v1"
    assert app.image_id() == good


def test_deleted_target_image_ends_in_one_escalation(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
    docker: docker.DockerClient,
) -> None:
    # An image of this test's own (same content, its own import), so deleting it hurts no other.
    own = build("v1", repository=f"rollbackd-test/deploy-gone-{app.name}")
    good = app.deploy(own)
    d = start_daemon(config(app, tmp_path, smtp))
    wait_for(lambda: known_good(d, good), 20, f"v1 known-good\n{d.log_text()}")
    app.deploy(images["v2"])
    docker.images.remove(good, force=True)

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = assert_escalated_once(d, inc, "verify_target")
    assert "not on the docker engine" in show["steps"][-1]["detail"]
    time.sleep(3)  # probes keep failing: still this one incident, nothing more was tried
    assert len(incidents(d)) == 1 and len(d.result("show", id=inc["id"])["steps"]) == 5
    wait_for(lambda: any("ROLLBACK FAILED" in s for s in smtp.subjects), 15, "failure mail")


def test_engine_down_ends_in_one_escalation(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    proxy = SocketProxy(tmp_path / "docker.sock").start()
    try:
        d, good = start_on_v1(app, images, start_daemon,
                              config(app, tmp_path, smtp, host=f"unix://{proxy.path}"))
        proxy.stop()  # the engine is gone as far as the daemon can tell ...
        app.deploy(images["v2"])  # ... and the app dies

        inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
        show = assert_escalated_once(d, inc, "backup_current")
        assert "is not answering" in show["steps"][-1]["detail"]
        # The container probe says so: an error (nothing known of the app), not a failure.
        container = show["evidence"]["probes"]["container"]
        assert container["status"] == "error" and "not answering" in container["detail"]
        assert "is not answering" in show["evidence"]["deployment"]["error"]
        time.sleep(3)
        assert len(incidents(d)) == 1
    finally:
        proxy.stop()


def test_failed_verification_after_the_rollback_ends_in_one_escalation(
    app: DockerApp, images: dict[str, str], smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d, good = start_on_v1(app, images, start_daemon,
                          config(app, tmp_path, smtp, verify_timeout="3s"))
    app.deploy(images["v2"])
    (app.state_dir / "broken").write_text("v1 will not be healthy either\n")

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = assert_escalated_once(d, inc, "verify")
    assert app.image_id() == good  # it did roll back; the app is still not healthy
    assert "503" in show["steps"][-1]["detail"]
    time.sleep(3)
    assert len(incidents(d)) == 1 and app.image_id() == good


def test_the_stop_steps_check_tells_a_crash_before_it_from_a_stop_it_made(
    app: DockerApp, images: dict[str, str],
) -> None:
    """After a restart, stop_failed_container's effect check: the failed container exited by
    itself before the step began -> absent (the step stopped nothing); stopped since the step
    began and not yet kept under a .failed. name -> unknown (the step may be half done); kept
    stopped as .failed. -> done."""
    good = app.deploy(images["v1"])
    before = datetime.now(UTC)
    bad = app.deploy(images["v2"])
    wait_for(lambda: app.container().status == "exited", 10, "v2 to exit")
    after = datetime.now(UTC)
    ex = DockerExecutor(DockerDeployment(container=app.name, docker_host=f"unix://{DOCKER_SOCKET}"))
    ctx = StepContext(1, "web", Plan(PlanKind.DEPLOYMENT_ROLLBACK, IncidentClass.APP_DOWN, (),
                                     {Component.DEPLOYMENT: good}, {Component.DEPLOYMENT: bad}))

    def check(since: datetime) -> Effect:
        return asyncio.run(ex.effect("stop_failed_container", ctx, since))

    crashed, stopped = check(after), check(before)
    assert crashed.found is Found.ABSENT and "exited by itself" in crashed.what
    assert stopped.found is Found.UNKNOWN and "is stopped but was not kept" in stopped.what
    app.container().rename(f"{app.name}.failed.20260101T000000Z")
    assert check(before).found is Found.DONE

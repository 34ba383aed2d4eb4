"""kill -9 of the daemon at both points of every step of the Docker (plain and test-first),
Kubernetes and key-reset plans.

The same walk as tests/reliability/test_kill9_every_step.py (tests/reliability/kill9.py): one
chain of crashes per plan and point, "at" (right after the step is journaled running) or
"after" (right after its effect, before `done` is journaled), a restart on the same state
directory after each, a person's approval after each hold, until the plan finishes. Then:

- every step is journaled done exactly once (interrupted once per restart that did not find it
  done), the incident is the only one and ends resolved; every hold said what was found;
- the real effects happened exactly once, counted where they happen, never from the daemon's
  own log: the Docker engine's events (one rename of the failed container, one creation and one
  start of the known-good one, nothing removed; test first: also one creation, start and
  removal of the candidate beside it, one stop of the slow container); the fake Kubernetes
  API's write requests (one JSON patch); the kernel's record of files renamed into place (one
  key write, one canary write), a trigger in the app's database (each ciphertext cleared
  once), the backup catalog (one backup of each kind for the incident) and the restart
  command's own counter;
- each recipient got each of the incident's mails once from the real SMTP server, and no event
  got a second Message-ID;
- the journal passes PRAGMA integrity_check.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.deploy.apps import HEALTH, DockerApp, build, daemon_toml
from tests.fakes.k8s_api import FakeKubernetes
from tests.infra.services import DOCKER_SOCKET
from tests.recovery.support import db_path, wait_healthy
from tests.reliability.file_events import RenamesInto
from tests.reliability.kill9 import (
    CHECKLIST,
    approve,
    assert_survived,
    both_points,
    daemon_for,
    data_section,
    walk,
)
from tests.reliability.support import counted, journal_rows, runs, toml_argv, unsent

pytestmark = pytest.mark.e2e


def with_hooks(text: str) -> str:
    """A config of tests/deploy/apps.py with the test-only fault hook on."""
    return text.replace("[daemon]\n", "[daemon]\ntest_hooks = true\n", 1)


def newest_incident(d: DaemonProcess) -> int:
    rows = journal_rows(d, "SELECT max(id) AS id FROM incidents")
    return int(rows[0]["id"] or 0)


def assert_swapped(app: DockerApp, good: str, failed: str) -> None:
    """Two containers and no more: the known-good one under the app's name, answering, and the
    failed one kept stopped as `<name>.failed.<ts>`."""
    names = app.all_names()
    assert len(names) == 2 and names[0] == app.name and ".failed." in names[1], names
    assert app.image_id() == good and app.image_id(names[1]) == failed
    assert app.container(names[1]).status == "exited"
    assert httpx.get(app.url, timeout=5).text.strip() == "ok v1"


def only_incident(d: DaemonProcess, incident_id: int, before: int) -> None:
    """The walk's incident is the only one since the fault (`before`: the newest incident
    then): no restart opened a second beside it. One a slow first probe run opened before the
    fault (an overrun on a busy machine) has closed by itself."""
    rows = journal_rows(d, "SELECT id, state FROM incidents")
    assert [(r["id"], r["state"]) for r in rows if r["id"] > before] == \
        [(incident_id, "resolved")]
    assert all(r["state"] == "transient" for r in rows if r["id"] <= before), \
        [dict(r) for r in rows]


def incident_backups(d: DaemonProcess, incident_id: int) -> Counter[str]:
    rows = journal_rows(d, "SELECT kind, versions FROM backups")
    return Counter(r["kind"] for r in rows
                   if json.loads(r["versions"] or "{}").get("incident") == incident_id)


# -- Docker: deployment_rollback on the real engine ---------------------------------------------

DOCKER_STEPS = [*CHECKLIST, "stop_failed_container", "start_known_good", "verify"]
COUNTED_ACTIONS = ("create", "rename", "start", "stop", "kill", "destroy")
"""What changes a container. `update` (the restart policy set to "no") is not counted: setting
it again is harmless; `die` follows a start or a kill."""


@pytest.fixture(scope="module")
def images(docker: docker.DockerClient) -> dict[str, str]:
    return {v: build(v) for v in ("v1", "v2", "v3")}


@pytest.fixture
def app(docker: docker.DockerClient, tmp_path: Path) -> Iterator[DockerApp]:
    a = DockerApp(docker, tmp_path / "appstate")
    yield a
    a.cleanup()


def engine_events(client: docker.DockerClient, name: str, since: str) -> list[dict[str, Any]]:
    """The counted events of the containers named `name` or `name.*` since `since`, as the
    engine's own event stream records them, oldest first."""
    found = client.api.events(since=since, until=f"{time.time():.9f}",
                              filters={"type": "container"}, decode=True)
    return [e for e in found if e["Action"] in COUNTED_ACTIONS
            and (e["Actor"]["Attributes"].get("name", "") == name
                 or e["Actor"]["Attributes"].get("name", "").startswith(f"{name}."))]


def engine_effects(client: docker.DockerClient, name: str, since: str) -> Counter[str]:
    """What the engine did to the containers named `name` or `name.*` since `since`."""
    return Counter(e["Action"] for e in engine_events(client, name, since))


def engine_effects_by_name(client: docker.DockerClient, name: str,
                           since: str) -> dict[str, Counter[str]]:
    """The same, per container, each under the name it has last ("failed": `name.failed.*`,
    "candidate": `name.candidate`, "app": `name`); two containers that ended under one name
    are counted together. A kill is counted with its signal ("kill 15")."""
    last: dict[str, str] = {}
    events = engine_events(client, name, since)
    for e in events:
        last[e["id"]] = e["Actor"]["Attributes"]["name"]

    def role(n: str) -> str:
        return "app" if n == name else "failed" if n.startswith(f"{name}.failed.") else \
            n.removeprefix(f"{name}.")

    found: dict[str, Counter[str]] = {}
    for e in events:
        signal = e["Actor"]["Attributes"].get("signal")
        action = f"kill {signal}" if e["Action"] == "kill" else e["Action"]
        found.setdefault(role(last[e["id"]]), Counter())[action] += 1
    return found


def docker_toml(app: DockerApp, smtp: SmtpSink, tmp_path: Path,
                deployment: dict[str, Any] | None = None,
                health: dict[str, Any] | None = None) -> str:
    host = f"unix://{DOCKER_SOCKET}"
    return with_hooks(daemon_toml(
        tmp_path / "state", smtp.port,
        {"kind": "docker", "container": app.name, "docker_host": host, "stop_timeout": "2s",
         "start_grace": "500ms", **(deployment or {})},
        {"health": {"kind": "http_health", "url": app.url, "interval": "500ms", "timeout": "2s",
                    "failure_threshold": 3, **(health or {})},
         "container": {"kind": "docker_container", "container": app.name, "docker_host": host,
                       "interval": "500ms", "timeout": "2s", "failure_threshold": 2}}))


@both_points
def test_docker_deployment_rollback_survives_kill9_at_every_step(
        app: DockerApp, images: dict[str, str], docker: docker.DockerClient, smtp: SmtpSink,
        tmp_path: Path, point: str) -> None:
    text = docker_toml(app, smtp, tmp_path)
    good = app.deploy(images["v1"])
    d = daemon_for(tmp_path, text, point, DOCKER_STEPS[0]).start()
    try:
        wait_for(lambda: known_good(d, good), 20, f"v1 known-good\n{d.log_text()[-3000:]}")
        since, bad = "", ""

        def deploy() -> None:
            nonlocal since, bad
            bad = app.deploy(images["v2"])  # `docker rm -f` + `docker run`: it exits 1 at once
            since = f"{time.time():.9f}"  # what the engine does from now on is the daemon's

        before = newest_incident(d)
        w = walk(d, smtp, point, DOCKER_STEPS, deploy)
        # One rename (the failed container kept), one creation and one start of the known-good
        # one: none repeated, nothing removed, the stopped container not stopped again.
        assert engine_effects(docker, app.name, since) == {"create": 1, "rename": 1, "start": 1}
        assert_swapped(app, good, bad)
        only_incident(d, w.incident, before)
        assert_survived(d, smtp, w, DOCKER_STEPS, "Docker")
    finally:
        d.stop()


# -- Docker: test first (the known-good image tried beside the slow one, then the swap) -------

BESIDE = ["start_beside", "probe_beside", "remove_beside"]
DOCKER_TEST_FIRST_STEPS = [*CHECKLIST, *BESIDE, "stop_failed_container", "start_known_good",
                           "verify"]
TEST_FIRST_FOUND = {
    # Nothing of a step is there before it ran; only the checklist's backup is found done (a
    # deployment keeps its state itself: nothing to back up).
    "at": {**dict.fromkeys(DOCKER_TEST_FIRST_STEPS, "absent"), "backup_current": "done"},
    # Every step that changes something is found done; the checks (verify_target,
    # probe_beside, verify) change nothing, so they run again.
    "after": {**dict.fromkeys(DOCKER_TEST_FIRST_STEPS, "done"),
              **dict.fromkeys(["verify_target", "probe_beside", "verify"], "absent")},
}
"""What each restart's effect check finds of the step the crash cut off. Never "unknown": no
hold asks a person to look at a half-done step; each asks whether to run it (again)."""


def docker_test_first_toml(app: DockerApp, smtp: SmtpSink, tmp_path: Path) -> str:
    """tests/deploy/test_docker_rollback.py's test-first configuration: a release slower than
    300 ms is perf_degraded, whose plan tries the known-good image on the spare port first."""
    return docker_toml(app, smtp, tmp_path, health={"max_latency": "300ms"}, deployment={
        "spare_port": app.spare_port, "port_env": "PORT", "probe_path": HEALTH,
        "probe_max_latency": "300ms", "probe_within": "10s"})


@both_points
def test_docker_test_first_rollback_survives_kill9_at_every_step(
        app: DockerApp, images: dict[str, str], docker: docker.DockerClient, smtp: SmtpSink,
        tmp_path: Path, point: str) -> None:
    good = app.deploy(images["v1"])
    d = daemon_for(tmp_path, docker_test_first_toml(app, smtp, tmp_path), point,
                   DOCKER_TEST_FIRST_STEPS[0]).start()
    try:
        wait_for(lambda: known_good(d, good), 20, f"v1 known-good\n{d.log_text()[-3000:]}")
        since, slow = "", ""

        def deploy() -> None:
            nonlocal since, slow
            slow = app.deploy(images["v3"])  # `docker rm -f` + `docker run`: 600 ms a request
            since = f"{time.time():.9f}"

        before = newest_incident(d)
        w = walk(d, smtp, point, DOCKER_TEST_FIRST_STEPS, deploy)
        found = {step: what.split(",")[0].split()[-1] for step, what in w.did}
        assert found == TEST_FIRST_FOUND[point], w.did
        # The candidate made, started and removed once (`rm -f`: SIGKILL, then destroy); the
        # slow container stopped once (httpd as PID 1 ignores SIGTERM: SIGKILL after
        # stop_timeout) and kept under a .failed. name; the known-good one made and started
        # once. Nothing repeated, nothing else touched.
        assert engine_effects_by_name(docker, app.name, since) == {
            "candidate": {"create": 1, "start": 1, "kill 9": 1, "destroy": 1},
            "failed": {"kill 15": 1, "kill 9": 1, "stop": 1, "rename": 1},
            "app": {"create": 1, "start": 1},
        }
        assert_swapped(app, good, slow)  # no candidate left behind
        only_incident(d, w.incident, before)
        assert_survived(d, smtp, w, DOCKER_TEST_FIRST_STEPS, "Docker test first")
    finally:
        d.stop()


def test_docker_test_first_kill9_at_start_beside_beside_a_leftover_candidate(
        app: DockerApp, images: dict[str, str], docker: docker.DockerClient, smtp: SmtpSink,
        tmp_path: Path) -> None:
    """A plan abandoned between start_beside and remove_beside leaves its candidate running.
    If it runs another release than this plan's target, it is not this start_beside's effect:
    after a crash at the step, the restart must not find the step done (the plan would go on to
    probe the leftover and swap to the target untested), and the step, run again, replaces it.
    Only "at": at "after" the step has replaced the leftover already (the walk above)."""
    good = app.deploy(images["v1"])
    # The leftover: another import of v1's files (fast, healthy), so another image id.
    other = build("v1", repository="rollbackd-test/deploy-leftover")
    app.runner.run(other, name=f"{app.name}.candidate", restart_policy={"Name": "no"},
                   environment={"PORT": str(app.spare_port)},
                   labels={"org.rollbackd.candidate-of": app.name})
    d = daemon_for(tmp_path, docker_test_first_toml(app, smtp, tmp_path), "at", "start_beside").start()
    try:
        wait_for(lambda: known_good(d, good), 20, f"v1 known-good\n{d.log_text()[-3000:]}")
        since = ""

        def deploy() -> None:
            nonlocal since
            app.deploy(images["v3"])
            since = f"{time.time():.9f}"

        before = newest_incident(d)
        w = walk(d, smtp, "at", ["start_beside"], deploy)
        assert w.did == [("start_beside", "effect absent, held, approved")], w.found
        assert f"runs image {docker.images.get(other).id.removeprefix('sha256:')[:12]}" in \
            w.found[0][1], w.found
        # The leftover killed and removed, then the target's candidate made, started, probed
        # and removed, once each.
        assert engine_effects_by_name(docker, app.name, since) == {
            "candidate": {"create": 1, "start": 1, "kill 9": 2, "destroy": 2},
            "failed": {"kill 15": 1, "kill 9": 1, "stop": 1, "rename": 1},
            "app": {"create": 1, "start": 1},
        }
        assert app.image_id() == good and len(app.all_names()) == 2, app.all_names()
        only_incident(d, w.incident, before)
        assert_survived(d, smtp, w, DOCKER_TEST_FIRST_STEPS, "Docker test first, leftover")
    finally:
        d.stop()


# -- Kubernetes: deployment_rollback against the fake API ---------------------------------------

K8S_STEPS = [*CHECKLIST, "restore_pod_template", "rollout_status", "check_pods", "verify"]
V1, V2 = "registry.local/grading:1", "registry.local/grading:2"


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", V1, replicas=2, progress_deadline=2)
        yield fake


def writes(k8s: FakeKubernetes) -> list[tuple[str, str, str]]:
    """Every request that could change the cluster (the test's own changes bypass the API)."""
    return [(method, path, ctype) for method, path, ctype, _ in k8s.requests
            if method not in ("GET", "HEAD")]


@both_points
def test_kubernetes_deployment_rollback_survives_kill9_at_every_step(
        k8s: FakeKubernetes, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    kc = k8s.kubeconfig(tmp_path / "kubeconfig")
    text = with_hooks(daemon_toml(
        tmp_path / "state", smtp.port,
        {"kind": "kubernetes", "namespace": "default", "deployment": "web",
         "kubeconfig": str(kc), "rollout_timeout": "20s", "poll_interval": "200ms",
         "api_timeout": "2s"},
        {"deploy": {"kind": "k8s_deployment", "deployment": "web", "kubeconfig": str(kc),
                    "interval": "500ms", "timeout": "2s", "failure_threshold": 2}}))
    d = daemon_for(tmp_path, text, point, K8S_STEPS[0]).start()
    try:
        wait_for(lambda: known_good(d, "1"), 20, f"revision 1 known-good\n{d.log_text()[-3000:]}")

        def deploy_crashing() -> None:
            k8s.cluster.failing_images[V2] = "CrashLoopBackOff"
            k8s.set_image("web", V2)

        before = newest_incident(d)
        w = walk(d, smtp, point, K8S_STEPS, deploy_crashing)
        # `kubectl rollout undo` once: one JSON patch, never a second revision on top.
        assert writes(k8s) == [("PATCH", "/apis/apps/v1/namespaces/default/deployments/web",
                                "application/json-patch+json")]
        assert k8s.revision("web") == "3"
        with k8s.cluster.lock:
            dep = k8s.cluster.deployments[("default", "web")]
            assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == V1
        only_incident(d, w.incident, before)
        assert_survived(d, smtp, w, K8S_STEPS, "Kubernetes")
    finally:
        d.stop()


# -- the key disaster: key_reset (clear what the lost key encrypted, a fresh key, restart) -----

KEY_RESET_STEPS = [*CHECKLIST, "clear_encrypted", "new_key", "restart_app", "verify"]
ENCRYPTED = "users.national_id_encrypted"
# Each row the clear sets to NULL, logged by the database itself as it happens.
CLEAR_LOG = """
CREATE TABLE kill9_cleared (user_id INTEGER NOT NULL);
CREATE TRIGGER kill9_count_clear AFTER UPDATE OF national_id_encrypted ON users
WHEN OLD.national_id_encrypted IS NOT NULL AND NEW.national_id_encrypted IS NULL
BEGIN INSERT INTO kill9_cleared (user_id) VALUES (NEW.id); END;
"""


def key_section(ws: Workspace, canary: Path, restarts: Path) -> str:
    # A canary file, not an inline canary: only then can a fresh key pass the probe again.
    return f"""
[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{canary}"
interval = "500ms"
failure_threshold = 2

[targets.grading.key]
file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{canary}"
restart = {toml_argv(counted(ws.restart_argv(), restarts))}
command_timeout = "30s"
"""


def awaiting_approval(d: DaemonProcess) -> Any:
    found = [i for i in d.result("incidents") if i["state"] == "awaiting_approval"]
    return found[0] if found else None


@both_points
def test_key_reset_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = workspace
    canary = tmp_path / "canary"
    good = ws.env()["DB_ENCRYPTION_KEY"]
    canary.write_text(Fernet(good.encode()).encrypt(b"rollbackd canary").decode() + "\n")
    lost = Fernet.generate_key().decode()  # the good key is gone, and was never backed up
    ws.env_file.write_text(ws.env_file.read_text().replace(good, lost))
    with closing(sqlite3.connect(db_path(ws))) as db:
        db.executescript(CLEAR_LOG)
        users = sorted(r[0] for r in db.execute(
            "SELECT id FROM users WHERE national_id_encrypted IS NOT NULL"))
    assert users
    markers = {m: tmp_path / m for m in ("stop", "start", "migrate", "restart")}
    data = data_section(ws, tmp_path, markers, "", key_section(ws, canary, markers["restart"]))
    data = data.replace('tables = ["users", "grades"]\n',
                        f'tables = ["users", "grades"]\nencrypted_columns = ["{ENCRYPTED}"]\n')
    ws.start()
    renamed = RenamesInto().watch(ws.env_file.parent).watch(canary.parent)
    d = daemon_for(tmp_path, ws.config_toml(smtp.port, extra="test_hooks = true",
                                            targets_extra=data),
                   point, KEY_RESET_STEPS[0]).start()
    try:
        def approve_the_reset() -> None:
            inc = wait_for(lambda: awaiting_approval(d), 30,
                           f"the key reset offered\n{d.log_text()[-3000:]}")
            assert "needs an explicit approval" in inc["reason"]
            wait_for(lambda: not unsent(d), 20, "the approval request mail")
            approve(d, inc["id"])

        w = walk(d, smtp, point, KEY_RESET_STEPS, approve_the_reset)
        # One fresh key and one canary written, whatever the restarts found: the kernel saw
        # each file renamed into place once.
        written = renamed.counts()
        assert (written[ws.env_file], written[canary]) == (1, 1), written
        fresh = ws.env()["DB_ENCRYPTION_KEY"]
        assert fresh not in (good, lost)
        assert Fernet(fresh.encode()).decrypt(canary.read_text().strip().encode()) == \
            b"rollbackd canary"
        # Each ciphertext set to NULL once, by the one clear; the app restarted once, the
        # database's stop, start and migrate commands never ran.
        with closing(sqlite3.connect(db_path(ws))) as db:
            cleared = sorted(r[0] for r in db.execute("SELECT user_id FROM kill9_cleared"))
            left = db.execute("SELECT count(*) FROM users WHERE national_id_encrypted IS NOT NULL"
                              ).fetchone()[0]
        assert (cleared, left) == (users, 0)
        assert [runs(markers[m]) for m in ("restart", "stop", "start", "migrate")] == [1, 0, 0, 0]
        # The checklist kept the ciphertexts and the lost key once each, before anything changed.
        assert incident_backups(d, w.incident) == {"database": 1, "key": 1}
        wait_healthy(ws)
        only_incident(d, w.incident, 0)
        assert_survived(d, smtp, w, KEY_RESET_STEPS, "key reset", also={"opened": 1})
    finally:
        renamed.close()
        d.stop()

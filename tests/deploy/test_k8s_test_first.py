"""Kubernetes test first against the fake API: a preview Deployment of the known-good template,
with its own selector, waited for through the API before the undo; a preview that never becomes
available undoes nothing.

What only a real cluster shows (docs/deployment-backends.md): real scheduling, image pulls and
readiness probes of the preview's pods, quota and admission refusals, and whether the preview's
own selector really keeps Services away from it. The fake plays the deployment controller and
marks pods ready after a fixed time; it answers the same REST calls the official client sends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from rollbackd.daemon.rollback.k8s_preview import PREVIEW_OF
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.deploy.apps import assert_escalated_once, daemon_toml, incidents, settled
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.e2e

V1, V2 = "registry.local/grading:1", "registry.local/grading:2"
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]
PREVIEW = ["create_preview", "await_preview", "delete_preview"]
UNDO = ["restore_pod_template", "rollout_status", "check_pods"]


class ServiceEndpoint:
    """What the Deployment serves through its Service: slow (450 ms) while it runs image v2."""

    def __init__(self, k8s: FakeKubernetes) -> None:
        def image() -> str:
            with k8s.cluster.lock:
                dep = k8s.cluster.deployments[("default", "web")]
                return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if image() == V2:
                    time.sleep(0.45)
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        fake.cluster.add_deployment("web", V1, replicas=2, progress_deadline=5)
        yield fake


@pytest.fixture
def endpoint(k8s: FakeKubernetes) -> Iterator[ServiceEndpoint]:
    e = ServiceEndpoint(k8s)
    yield e
    e.stop()


def start_on_v1(k8s: FakeKubernetes, endpoint: ServiceEndpoint, tmp_path: Path, smtp: SmtpSink,
                start: Any, env: dict[str, str] | None = None) -> DaemonProcess:
    kc = k8s.kubeconfig(tmp_path / "kubeconfig")
    text = daemon_toml(
        tmp_path / "state", smtp.port,
        {"kind": "kubernetes", "namespace": "default", "deployment": "web",
         "kubeconfig": str(kc), "rollout_timeout": "20s", "poll_interval": "200ms",
         "api_timeout": "2s", "test_first": True, "preview_timeout": "3s"},
        {"deploy": {"kind": "k8s_deployment", "deployment": "web", "kubeconfig": str(kc),
                    "interval": "500ms", "timeout": "2s", "failure_threshold": 2},
         "health": {"kind": "http_health", "url": endpoint.url, "interval": "500ms",
                    "timeout": "2s", "failure_threshold": 3, "max_latency": "300ms"}})
    if env:
        text = text.replace('metrics_address = ""\n', 'metrics_address = ""\ntest_hooks = true\n')
    d: DaemonProcess = start(text, env=env)
    wait_for(lambda: known_good(d, "1"), 20, f"revision 1 known-good\n{d.log_text()}")
    return d


def calls(k8s: FakeKubernetes) -> list[tuple[int, str, str, Any]]:
    """(index, method, path, body) of every call that changes something."""
    return [(i, m, p, b) for i, (m, p, _, b) in enumerate(k8s.requests)
            if m in ("POST", "PATCH", "DELETE")]


def test_slow_revision_is_undone_after_a_preview_of_the_known_good_one_became_available(
    k8s: FakeKubernetes, endpoint: ServiceEndpoint, smtp: SmtpSink, start_daemon: Any,
    tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, endpoint, tmp_path, smtp, start_daemon)
    k8s.set_image("web", V2)

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert show["incident_class"] == "perf_degraded"
    assert [(s["name"], s["state"]) for s in show["steps"]] == [
        (n, "done") for n in [*CHECKLIST, *PREVIEW, *UNDO, "verify"]]
    changes = calls(k8s)
    assert [(m, p.split("?")[0].rsplit("/", 1)[-1]) for _, m, p, _ in changes] == [
        ("POST", "deployments"), ("DELETE", "web-rbd-preview"), ("PATCH", "web")]
    post = changes[0][3]
    # Its own selector: the live Deployment's (app=web), and a Service's, match none of its pods.
    assert post["spec"]["selector"] == {"matchLabels": {PREVIEW_OF: "web"}}
    assert post["spec"]["template"]["metadata"]["labels"] == {PREVIEW_OF: "web"}
    assert post["spec"]["template"]["spec"]["containers"][0]["image"] == V1
    assert post["spec"]["replicas"] == 1
    # Waited for through the API: the preview was read available before it was deleted.
    reads = [i for i, (m, p, _, _) in enumerate(k8s.requests)
             if m == "GET" and "deployments?" in p and "preview-of" in p]
    assert any(changes[0][0] < i < changes[1][0] for i in reads)
    assert "available after" in {s["name"]: s["detail"] for s in show["steps"]}["await_preview"]
    assert ("default", "web-rbd-preview") not in k8s.cluster.deployments
    assert not [rs for (_, n), rs in k8s.cluster.replica_sets.items() if "preview" in n]
    assert k8s.revision("web") == "3"


def test_preview_that_never_becomes_available_undoes_nothing(
    k8s: FakeKubernetes, endpoint: ServiceEndpoint, smtp: SmtpSink, start_daemon: Any,
    tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, endpoint, tmp_path, smtp, start_daemon)
    k8s.set_image("web", V2)
    wait_for(lambda: not [p for p in k8s.cluster.pods.values()
                          if p["spec"]["containers"][0]["image"] == V1], 10, "v1 pods gone")
    k8s.cluster.failing_images[V1] = "CrashLoopBackOff"  # e.g. a secret only v1 reads is gone

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = assert_escalated_once(d, inc, "await_preview")
    detail = show["steps"][-1]["detail"]
    assert "escalating instead of undoing: nothing was undone, revision 2 stays" in detail, detail
    assert "deleted the preview deployment default/web-rbd-preview" in detail
    assert [m for _, m, _, _ in calls(k8s)] == ["POST", "DELETE"]  # no PATCH: zero undos
    assert k8s.revision("web") == "2"
    assert ("default", "web-rbd-preview") not in k8s.cluster.deployments
    time.sleep(3)
    # A rollout's short gap may open an incident that closes by itself (transient): not acted on.
    acted = [i for i in incidents(d) if i["state"] != "transient"]
    assert len(acted) == 1 and k8s.revision("web") == "2"
    assert [m for _, m, _, _ in calls(k8s)] == ["POST", "DELETE"]


def test_kill9_after_the_preview_was_created_leaves_no_preview(
    k8s: FakeKubernetes, endpoint: ServiceEndpoint, smtp: SmtpSink, start_daemon: Any,
    tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, endpoint, tmp_path, smtp, start_daemon,
                    env={"ROLLBACKD_CRASH_AFTER_STEP": "create_preview"})
    k8s.set_image("web", V2)
    assert d.proc is not None
    wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 40,
             f"the daemon killed after create_preview\n{d.log_text()}")
    assert ("default", "web-rbd-preview") in k8s.cluster.deployments  # left by the crash

    d.env.pop("ROLLBACKD_CRASH_AFTER_STEP")
    d.start()
    inc = wait_for(lambda: settled(d, ("held",)), 30, f"incident held\n{d.log_text()}")
    assert ("default", "web-rbd-preview") not in k8s.cluster.deployments
    assert not [p for (_, n), p in k8s.cluster.pods.items() if "preview" in n]
    cut = next(s for s in d.result("show", id=inc["id"])["steps"]
               if s["name"] == "create_preview")
    assert cut["state"] == "interrupted"
    assert "deleted the preview deployment default/web-rbd-preview" in cut["detail"]
    assert k8s.revision("web") == "2"  # nothing was undone
    assert not [m for _, m, _, _ in calls(k8s) if m == "PATCH"]

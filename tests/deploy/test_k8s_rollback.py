"""Kubernetes rollback end to end: the official client in a real daemon against the fake API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.deploy.apps import assert_escalated_once, daemon_toml, incidents, settled
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.e2e

V1, V2 = "registry.local/grading:1", "registry.local/grading:2"
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]
STEPS = ["restore_pod_template", "rollout_status", "check_pods"]


class AppEndpoint:
    """What the Deployment serves, as seen through its Service: 200 until stopped."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
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
        fake.cluster.add_deployment("web", V1, replicas=2, progress_deadline=2)
        yield fake


def config(k8s: FakeKubernetes, tmp_path: Path, smtp: SmtpSink,
           extra_probes: dict[str, dict[str, Any]] | None = None) -> str:
    kc = k8s.kubeconfig(tmp_path / "kubeconfig")
    return daemon_toml(
        tmp_path / "state", smtp.port,
        {"kind": "kubernetes", "namespace": "default", "deployment": "web",
         "kubeconfig": str(kc), "rollout_timeout": "20s", "poll_interval": "200ms",
         "api_timeout": "2s"},
        {"deploy": {"kind": "k8s_deployment", "deployment": "web", "kubeconfig": str(kc),
                    "interval": "500ms", "timeout": "2s", "failure_threshold": 2},
         **(extra_probes or {})})


def start_on_v1(k8s: FakeKubernetes, tmp_path: Path, smtp: SmtpSink, start: Any,
                **kw: Any) -> DaemonProcess:
    d: DaemonProcess = start(config(k8s, tmp_path, smtp, **kw))
    wait_for(lambda: known_good(d, "1"), 20, f"revision 1 known-good\n{d.log_text()}")
    return d


def deploy_crashing(k8s: FakeKubernetes, image: str = V2) -> None:
    k8s.cluster.failing_images[image] = "CrashLoopBackOff"
    k8s.set_image("web", image)


def test_crash_looping_revision_is_undone_to_the_known_good_one(
    k8s: FakeKubernetes, smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, tmp_path, smtp, start_daemon)
    deploy_crashing(k8s)
    assert k8s.revision("web") == "2"

    inc = wait_for(lambda: settled(d), 30, f"incident settled\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    assert show["state"] == "resolved", show
    assert show["incident_class"] == "app_down"
    assert (show["from_version"], show["to_version"]) == ("2", "1")
    assert [(s["name"], s["state"]) for s in show["steps"]] == [
        (n, "done") for n in [*CHECKLIST, *STEPS, "verify"]]
    events = [e["event"] for e in show["timeline"]]
    for earlier, later in [("detected", "started"), ("started", "rolled_back"),
                           ("rolled_back", "verified")]:
        assert events.index(earlier) < events.index(later), events

    dep = show["evidence"]["deployment"]
    assert dep["revision"] == "2" and dep["images"] == [V2]
    assert dep["pod_problems"] and "CrashLoopBackOff" in dep["pod_problems"][0]
    assert "CrashLoopBackOff" in show["evidence"]["probes"]["deploy"]["detail"]

    # As `kubectl rollout undo --to-revision=1`: one JSON patch of the template and annotations.
    patches = [(ctype, body) for method, _, ctype, body in k8s.requests if method == "PATCH"
               and ctype == "application/json-patch+json"]
    assert len(patches) == 1
    ops = {op["path"]: op for op in patches[0][1]}
    assert set(ops) == {"/spec/template", "/metadata/annotations"}
    template = ops["/spec/template"]["value"]
    assert template["spec"]["containers"][0]["image"] == V1
    assert "pod-template-hash" not in template["metadata"]["labels"]
    # The reused ReplicaSet became revision 3; revision 1 lives on in its history.
    assert k8s.revision("web") == "3"
    rs = next(r for r in k8s.cluster.replica_sets.values()
              if r["spec"]["template"]["spec"]["containers"][0]["image"] == V1)
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    ledger = {e["version"]: e["state"] for e in d.result("known-good", target="web")}
    assert ledger["2"] == "bad" and ledger["1"] == "known-good"
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")


def test_pruned_revision_ends_in_one_escalation(
    k8s: FakeKubernetes, smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, tmp_path, smtp, start_daemon)
    deploy_crashing(k8s)
    k8s.delete_revision("web", "1")  # what revisionHistoryLimit does to old ReplicaSets

    inc = wait_for(lambda: settled(d), 30, f"incident settled\n{d.log_text()}")
    show = assert_escalated_once(d, inc, "verify_target")
    assert "revision 1 of deployment default/web is gone" in show["steps"][-1]["detail"]
    time.sleep(3)
    assert len(incidents(d)) == 1
    assert not [r for r in k8s.requests if r[0] == "PATCH" and "json-patch" in r[2]]


def test_api_down_ends_in_one_escalation(
    k8s: FakeKubernetes, smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    app = AppEndpoint()
    try:
        d = start_on_v1(k8s, tmp_path, smtp, start_daemon, extra_probes={"health": {
            "kind": "http_health", "url": app.url, "interval": "500ms", "timeout": "1s"}})
        k8s.stop()
        app.stop()

        inc = wait_for(lambda: settled(d), 30, f"incident settled\n{d.log_text()}")
        show = assert_escalated_once(d, inc, "backup_current")
        assert "kubernetes API at http://127.0.0.1" in show["steps"][-1]["detail"]
        assert "not answering" in show["steps"][-1]["detail"]
        deploy_probe = show["evidence"]["probes"]["deploy"]
        assert deploy_probe["status"] == "error" and "not answering" in deploy_probe["detail"]
        time.sleep(3)
        assert len(incidents(d)) == 1
    finally:
        app.stop()


def test_rollout_that_never_becomes_ready_ends_in_one_escalation(
    k8s: FakeKubernetes, smtp: SmtpSink, start_daemon: Any, tmp_path: Path,
) -> None:
    d = start_on_v1(k8s, tmp_path, smtp, start_daemon)
    deploy_crashing(k8s)
    k8s.cluster.failing_images[V1] = "CrashLoopBackOff"  # e.g. a secret both versions need broke

    inc = wait_for(lambda: settled(d), 40, f"incident settled\n{d.log_text()}")
    show = assert_escalated_once(d, inc, "rollout_status")
    assert "exceeded its progress deadline" in show["steps"][-1]["detail"]
    assert k8s.revision("web") == "3"  # it did roll back; the rollout itself cannot finish
    time.sleep(3)
    assert len(incidents(d)) == 1

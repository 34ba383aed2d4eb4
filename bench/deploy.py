"""Benchmark (not a test): decision -> verified healthy, per deployment backend, on real parts.

    .venv/bin/python bench/deploy.py               # 3 runs of each backend
    .venv/bin/python bench/deploy.py --runs 5 --backends docker kubernetes

Each run starts a fresh real daemon process (`rollbackd run`) with a local SMTP sink, lets the
known-good version earn its title (stable_after 2 s), deploys a broken one, and waits until the
daemon has rolled back and verified. Timings come from the incident in the journal: `detected`
is when the decision tree opened the incident and chose the plan; `verified` is when every probe
passed again. Backends:

- git: the bundled sample app in a git repository, a broken commit (no dependency change);
- docker: the tests' private dockerd (scripts/services), local busybox images, a v2 that exits 1;
- kubernetes: the official client against the fake API server (tests/fakes/k8s_api.py), a v2
  that crash-loops; its pods get ready 0.3 s after they start (the "rollout's own wait").

It prints a table beside the manual runbook's stated times and exits 1 if a goal is missed.
Only 127.0.0.1 (and the engine's unix socket) is used; every container it starts is removed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = {"docker": "2-5 min", "git": "5-10 min", "kubernetes": "1-3 min"}
GOALS = {"docker": 10.0, "git": 15.0, "kubernetes": 5.0}
"""Seconds from decision to verified; kubernetes: plus the rollout's own wait."""


def _daemon(work: Path, text: str) -> Any:
    from rollbackd.daemon.config import load_config
    from tests.conftest import DaemonProcess

    path = work / "rollbackd.toml"
    path.write_text(text)
    cfg = load_config(path)
    return DaemonProcess(path, cfg.daemon.socket, cfg.daemon.state_dir,
                         work / "daemon.log").start()


def _resolved(d: Any) -> dict[str, Any]:
    from tests.conftest import wait_for

    def done() -> Any:
        found = d.result("incidents")
        return found[0] if found and found[0]["state"] in ("resolved", "escalated") else None

    inc = wait_for(done, 60, f"the incident to end\n{d.log_text()}")
    show: dict[str, Any] = d.result("show", id=inc["id"])
    if show["state"] != "resolved":
        raise RuntimeError(f"the rollback failed: {show['steps'][-1]}\n{d.log_text()}")
    return show


def _timings(show: dict[str, Any]) -> dict[str, float]:
    t = {k: datetime.fromisoformat(v) for k, v in show["timings"].items() if v}
    steps = {s["name"]: s["duration"] or 0.0 for s in show["steps"]}
    return {
        "total": (t["verified"] - t["detected"]).total_seconds(),
        "verify": steps.get("verify", 0.0),
        "rollout": steps.get("rollout_status", 0.0),
    }


def run_git(work: Path, smtp_port: int) -> dict[str, float]:
    from rollbackd.daemon.demo.workspace import Workspace
    from tests.conftest import known_good, wait_for

    ws = Workspace.create(work / "ws")
    ws.start()
    d = _daemon(work, ws.config_toml(smtp_port))
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 30, "the known-good version")
        ws.deploy_broken()
        return _timings(_resolved(d))
    finally:
        d.stop()
        ws.stop()


def run_docker(work: Path, smtp_port: int) -> dict[str, float]:
    from tests.conftest import known_good, wait_for
    from tests.deploy.apps import DockerApp, build, daemon_toml
    from tests.infra.services import DOCKER_SOCKET, docker_client

    client = docker_client()
    app = DockerApp(client, work / "appstate")
    host = f"unix://{DOCKER_SOCKET}"
    try:
        good = app.deploy(build("v1"))
        d = _daemon(work, daemon_toml(
            work / "state", smtp_port,
            {"kind": "docker", "container": app.name, "docker_host": host, "stop_timeout": "2s"},
            {"health": {"kind": "http_health", "url": app.url, "interval": "500ms",
                        "timeout": "2s", "failure_threshold": 3},
             "container": {"kind": "docker_container", "container": app.name,
                           "docker_host": host, "interval": "500ms", "failure_threshold": 2}}))
        try:
            wait_for(lambda: known_good(d, good), 30, "the known-good version")
            app.deploy(build("v2"))
            return _timings(_resolved(d))
        finally:
            d.stop()
    finally:
        app.cleanup()
        client.close()


def run_kubernetes(work: Path, smtp_port: int) -> dict[str, float]:
    from tests.conftest import known_good, wait_for
    from tests.deploy.apps import daemon_toml
    from tests.fakes.k8s_api import FakeKubernetes

    with FakeKubernetes() as k8s:
        k8s.cluster.add_deployment("web", "registry.local/grading:1", replicas=3)
        kc = str(k8s.kubeconfig(work / "kubeconfig"))
        d = _daemon(work, daemon_toml(
            work / "state", smtp_port,
            {"kind": "kubernetes", "deployment": "web", "kubeconfig": kc,
             "poll_interval": "200ms"},
            {"deploy": {"kind": "k8s_deployment", "deployment": "web", "kubeconfig": kc,
                        "interval": "500ms", "failure_threshold": 2}}))
        try:
            wait_for(lambda: known_good(d, "1"), 30, "the known-good revision")
            k8s.cluster.failing_images["registry.local/grading:2"] = "CrashLoopBackOff"
            k8s.set_image("web", "registry.local/grading:2")
            return _timings(_resolved(d))
        finally:
            d.stop()


RUNNERS: dict[str, Callable[[Path, int], dict[str, float]]] = {
    "docker": run_docker, "git": run_git, "kubernetes": run_kubernetes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # tests/ holds the fixtures' helpers this reuses
    from tests.conftest import SmtpSink

    results: dict[str, list[dict[str, float]]] = {}
    smtp = SmtpSink()
    smtp.controller.start()
    try:
        for backend in args.backends:
            for i in range(args.runs):
                with tempfile.TemporaryDirectory(prefix=f"rollbackd-bench-{backend}-") as tmp:
                    started = time.monotonic()
                    t = RUNNERS[backend](Path(tmp), smtp.port)
                    results.setdefault(backend, []).append(t)
                    print(f"{backend} run {i + 1}: decision -> verified {t['total']:.2f}s "
                          f"(whole run {time.monotonic() - started:.1f}s)", file=sys.stderr)
    finally:
        smtp.controller.stop()
    return report(results)


def report(results: dict[str, list[dict[str, float]]]) -> int:
    head = ("backend", "runs", "decision -> verified", "min-max", "of it: verify",
            "rollout wait", "manual runbook", "goal", "result")
    rows, missed = [head], False
    for backend, runs in results.items():
        totals = [r["total"] for r in runs]
        median = statistics.median(totals)
        judged = max(r["total"] - r["rollout"] for r in runs)
        goal = f"< {GOALS[backend]:g} s" + (" + rollout" if backend == "kubernetes" else "")
        ok = judged < GOALS[backend]
        missed |= not ok
        rows.append((backend, str(len(runs)), f"{median:.1f} s", f"{min(totals):.1f}-"
                     f"{max(totals):.1f} s", f"{statistics.median(r['verify'] for r in runs):.1f} s",
                     f"{statistics.median(r['rollout'] for r in runs):.1f} s"
                     if backend == "kubernetes" else "-",
                     RUNBOOK[backend], goal, "ok" if ok else "MISSED"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

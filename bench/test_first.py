"""Benchmark (not a test): test first on git and Docker, step by step, on real parts.

    .venv/bin/python bench/test_first.py               # 3 runs of each backend
    .venv/bin/python bench/test_first.py --runs 5 --backends git

Each run starts a fresh real daemon process with a local SMTP sink, lets the known-good version
earn its title, deploys a slow one (/health takes 450 ms on git, 600 ms on Docker; the limit is
300 ms) and waits until the daemon has tested the known-good version beside it, swapped it in
and verified. Durations are the journal's own per step:

- candidate start: git `start_candidate` (second work tree + process listening on the spare
  port); Docker `start_beside` (container created and started);
- probe: git `probe_candidate` (5 rounds, live and candidate each asked once per round); Docker
  `probe_beside` (3 good answers in a row);
- cleanup: git `stop_candidate` (SIGTERM, work tree removed); Docker `remove_beside`;
- swap: git `git_checkout` + `install_dependencies` + `restart_service`; Docker
  `stop_failed_container` + `start_known_good` (start_grace 500 ms included);
- detected -> verified: the incident's whole span.

git runs the bundled sample app; Docker the tests' private dockerd (scripts/services) with local
busybox images. Only 127.0.0.1 and the engine's unix socket are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.deploy import _daemon, _resolved  # noqa: E402

PHASES = {
    "git": {"candidate start": ["start_candidate"], "probe": ["probe_candidate"],
            "cleanup": ["stop_candidate"],
            "swap": ["git_checkout", "install_dependencies", "restart_service"]},
    "docker": {"candidate start": ["start_beside"], "probe": ["probe_beside"],
               "cleanup": ["remove_beside"],
               "swap": ["stop_failed_container", "start_known_good"]},
}


def _phases(backend: str, show: dict[str, Any]) -> dict[str, float]:
    steps = {s["name"]: s["duration"] or 0.0 for s in show["steps"]}
    missing = [n for names in PHASES[backend].values() for n in names if n not in steps]
    if missing:
        raise RuntimeError(f"{backend}: test first was not used (no {', '.join(missing)}): "
                           f"{show['incident_class']}, steps {list(steps)}")
    out = {phase: sum(steps[n] for n in names) for phase, names in PHASES[backend].items()}
    t = {k: datetime.fromisoformat(v) for k, v in show["timings"].items() if v}
    out["detected -> verified"] = (t["verified"] - t["detected"]).total_seconds()
    return out


def run_git(work: Path, smtp_port: int) -> dict[str, float]:
    from rollbackd.daemon.demo.workspace import SLOW_HEALTH, Workspace, free_port
    from rollbackd.daemon.drills.injectors_git import HEALTH
    from tests.conftest import known_good, wait_for

    ws = Workspace.create(work / "ws")
    ws.start()
    text = ws.config_toml(smtp_port, health_extra=SLOW_HEALTH,
                          targets_extra=ws.test_first_toml(free_port()))
    # The restart onto the slow version must not read as app_down on a loaded machine.
    text = text.replace("failure_threshold = 3\n", "failure_threshold = 6\n", 1)
    d = _daemon(work, text)
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 30, "the known-good version")
        app = ws.app_dir / "app.py"
        app.write_text(app.read_text().replace(HEALTH, HEALTH + "        time.sleep(0.45)\n"))
        ws.git("commit", "-q", "-am", "v2: slow health")
        ws.restart()
        return _phases("git", _resolved(d))
    finally:
        d.stop()
        ws.stop()


def run_docker(work: Path, smtp_port: int) -> dict[str, float]:
    from tests.conftest import known_good, wait_for
    from tests.deploy.apps import HEALTH, DockerApp, build, daemon_toml
    from tests.infra.services import DOCKER_SOCKET, docker_client

    client = docker_client()
    app = DockerApp(client, work / "appstate")
    host = f"unix://{DOCKER_SOCKET}"
    try:
        good = app.deploy(build("v1"))
        d = _daemon(work, daemon_toml(
            work / "state", smtp_port,
            {"kind": "docker", "container": app.name, "docker_host": host, "stop_timeout": "2s",
             "start_grace": "500ms", "spare_port": app.spare_port, "port_env": "PORT",
             "probe_path": HEALTH, "probe_max_latency": "300ms", "probe_within": "10s"},
            {"health": {"kind": "http_health", "url": app.url, "interval": "500ms",
                        "timeout": "2s", "failure_threshold": 3, "max_latency": "300ms"}}))
        try:
            wait_for(lambda: known_good(d, good), 30, "the known-good version")
            app.deploy(build("v3"))
            return _phases("docker", _resolved(d))
        finally:
            d.stop()
    finally:
        app.cleanup()
        client.close()


RUNS: dict[str, Callable[[Path, int], dict[str, float]]] = {"git": run_git, "docker": run_docker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args(argv)
    from tests.conftest import SmtpSink

    smtp = SmtpSink()
    smtp.controller.start()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        for backend in args.backends:
            for i in range(args.runs):
                with tempfile.TemporaryDirectory(prefix=f"rbd-tf-{backend}-", dir="/tmp") as w:
                    found = RUNS[backend](Path(w), smtp.port)
                results.setdefault(backend, []).append(found)
                print(f"{backend} run {i + 1}: " + ", ".join(
                    f"{k} {v:.2f}s" for k, v in found.items()), flush=True)
    finally:
        smtp.controller.stop()
    cols = ["candidate start", "probe", "cleanup", "swap", "detected -> verified"]
    print("\n| backend | runs | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for backend, runs in results.items():
        cells = [f"{statistics.median(r[c] for r in runs):.2f} s "
                 f"(max {max(r[c] for r in runs):.2f})" for c in cols]
        print(f"| {backend} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

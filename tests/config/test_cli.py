"""The real `rollbackd` console script: check-config and probe, against a local HTTP server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROLLBACKD = Path(sys.executable).with_name("rollbackd")
SECRET = "cli-s3cr3t-never-printed"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ROLLBACKD.exists(), f"console script missing: {ROLLBACKD}"
    clean = {
        k: v for k, v in os.environ.items()
        if "proxy" not in k.lower() and k != "CREDENTIALS_DIRECTORY"
    }
    return subprocess.run(
        [str(ROLLBACKD), *args], capture_output=True, text=True, timeout=30,
        env={**clean, **(env or {})}, check=False,
    )


# --- a tiny HTTP server on 127.0.0.1 ----------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.hits.append(self.path)
        code = {"/health": 200, "/bad": 500}.get(self.path, 404)
        body = b"ok\n" if code == 200 else b"broken\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: list[str]


@dataclass
class HttpServer:
    url: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", server.hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connections are refused, and nobody else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def write_config(tmp_path: Path, probes: dict[str, dict[str, str]], extra: str = "") -> Path:
    """probes: target -> probe name -> URL."""
    text = f'[daemon]\nstate_dir = "state"\nmetrics_address = ""\n{extra}\n'
    for target, by_name in probes.items():
        for name, url in by_name.items():
            text += (f'[targets.{target}.probes.{name}]\nkind = "http_health"\n'
                     f'url = "{url}"\ntimeout = "3s"\n\n')
    path = tmp_path / "rollbackd.toml"
    path.write_text(text)
    return path


LINE = re.compile(r"^(?P<target>[\w-]+)/(?P<probe>[\w-]+) \(http_health\): (?P<status>ok|fail|error)"
                  r"(?: \[(?P<symptom>\w+)\])? (?P<detail>.*) in \d+ ms$")


def probe_lines(stdout: str) -> dict[str, re.Match[str]]:
    lines = stdout.splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return {f"{m['target']}/{m['probe']}": m for m in matches if m}


# --- check-config -----------------------------------------------------------------------------


def test_check_config_valid(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"grading": {"health": "http://127.0.0.1:9/health",
                                               "login": "http://127.0.0.1:9/login"}})
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (1 targets, 2 probes, 1 warnings)\n"
    assert result.stderr == (f"{path}: warning: contacts: no [contacts.emergency] (the emergency "
                             "role): an open breaker, a key disaster or a failed rollback reaches "
                             "only the usual roles\n")


def test_check_config_bad_prints_file_and_key_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"grading": {"health": "http://127.0.0.1:9/health"}},
                        extra='bogus_key = 1\n[smtp]\nport = "x"\n')
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    assert f"{path}: daemon.bogus_key: unknown key" in lines
    assert f"{path}: smtp.port: must be an integer (got 'x')" in lines


def test_check_config_bad_probe_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[targets.grading.probes.health]\nkind = "http_health"\ninterval = "0s"\n')
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        f"{path}: targets.grading.probes.health.interval: must be greater than 0 (got '0s')",
        f"{path}: targets.grading.probes.health.url: required key is missing",
    ]


def test_check_config_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[targets.grading\n")
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: invalid TOML: ")


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "does-not-exist.toml"
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}: cannot read config file: No such file or directory\n"


def test_check_config_credential_is_never_printed(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp-password").write_text(SECRET + "\n")
    path = write_config(tmp_path, {"grading": {"health": "http://127.0.0.1:9/health"}},
                        extra='[smtp]\nusername = "u"\npassword_file = "smtp-password"\n')
    ok = run("check-config", str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.returncode == 0, ok.stderr
    missing = run("check-config", str(path))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"{path}: smtp.password_file: secret 'smtp-password' is a "
                                     "relative name")
    for result in (ok, missing):
        assert SECRET not in result.stdout + result.stderr


# --- probe --------------------------------------------------------------------------------------


def test_probe_all_pass(tmp_path: Path, http_server: HttpServer) -> None:
    path = write_config(tmp_path, {"grading": {"health": f"{http_server.url}/health"},
                                   "billing": {"up": f"{http_server.url}/health"}})
    before = len(http_server.hits)
    result = run("probe", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = probe_lines(result.stdout)
    assert set(lines) == {"grading/health", "billing/up"}
    for m in lines.values():
        assert m["status"] == "ok" and m["symptom"] is None and m["detail"].startswith("HTTP 200")
    assert http_server.hits[before:] == ["/health", "/health"]


def test_probe_server_error_fails_and_names_the_probe(
    tmp_path: Path, http_server: HttpServer
) -> None:
    path = write_config(tmp_path, {"grading": {"health": f"{http_server.url}/health",
                                               "api": f"{http_server.url}/bad"}})
    result = run("probe", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = probe_lines(result.stdout)
    assert lines["grading/health"]["status"] == "ok"
    bad = lines["grading/api"]
    assert (bad["status"], bad["symptom"]) == ("fail", "server_error")
    assert bad["detail"].startswith("HTTP 500")


def test_probe_closed_port_fails_as_unreachable(
    tmp_path: Path, http_server: HttpServer, closed_port: int
) -> None:
    path = write_config(tmp_path, {"grading": {"health": f"{http_server.url}/health"},
                                   "billing": {"down": f"http://127.0.0.1:{closed_port}/health"}})
    result = run("probe", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = probe_lines(result.stdout)
    assert lines["grading/health"]["status"] == "ok"
    down = lines["billing/down"]
    assert (down["status"], down["symptom"]) == ("fail", "unreachable")
    assert down["detail"].startswith("cannot connect")


def test_probe_one_target_only(
    tmp_path: Path, http_server: HttpServer, closed_port: int
) -> None:
    path = write_config(tmp_path, {"grading": {"health": f"{http_server.url}/health"},
                                   "billing": {"down": f"http://127.0.0.1:{closed_port}/"}})
    good = run("probe", "--config", str(path), "grading")
    assert good.returncode == 0, good.stdout + good.stderr
    assert set(probe_lines(good.stdout)) == {"grading/health"}
    bad = run("probe", "--config", str(path), "billing")
    assert bad.returncode == 1
    assert set(probe_lines(bad.stdout)) == {"billing/down"}


def test_probe_unknown_target(tmp_path: Path, http_server: HttpServer) -> None:
    path = write_config(tmp_path, {"grading": {"health": f"{http_server.url}/health"}})
    before = len(http_server.hits)
    result = run("probe", "--config", str(path), "nope")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}: no target 'nope' (have: grading)\n"
    assert len(http_server.hits) == before  # nothing was probed


def test_probe_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[targets.grading.probes.health]\nkind = "tcp"\nurl = "http://127.0.0.1:9/"\n')
    result = run("probe", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}: targets.grading.probes.health.kind: must be one of")

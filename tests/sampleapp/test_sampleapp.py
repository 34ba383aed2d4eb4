"""Real-process tests of the sample grading app, its migrations and its service manager."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rollbackd.daemon.demo.sampleapp import TEMPLATE_DIR, scaffold, service

from .conftest import PASSWORD, Deployment

ALICE = "alice@example.org"

HEAD_REVISION = "0003"  # the newest migration shipped with the sample app


def login(http: httpx.Client, email: str = ALICE, password: str = PASSWORD) -> httpx.Response:
    return http.post("/api/auth/login", json={"email": email, "password": password})


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_scaffold_copies_template_without_caches(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "app"
    scaffold(dest)
    copied = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    for required in (
        "app.py",
        "seed.py",
        "alembic.ini",
        "requirements.txt",
        "migrations/env.py",
        "migrations/script.py.mako",
        "migrations/versions/0001_users.py",
        "migrations/versions/0002_audit.py",
    ):
        assert required in copied
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in copied)
    assert TEMPLATE_DIR.is_dir()


def test_template_is_independent_of_daemon_package() -> None:
    for source in TEMPLATE_DIR.rglob("*.py"):
        text = source.read_text()
        assert "import daemon" not in text and "from daemon" not in text, source


def test_health_reports_head_revision(client: httpx.Client) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "version": "test-1", "alembic_revision": HEAD_REVISION}


def test_login_and_me(client: httpx.Client) -> None:
    resp = login(client)
    assert resp.status_code == 200, resp.text
    token = resp.json()["token"]
    me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["email"] == ALICE
    assert me.json()["national_id"] == f"ID-{ALICE}"
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_login_rejects_bad_input(client: httpx.Client) -> None:
    assert login(client, password="wrong").status_code == 401
    assert login(client, email="nobody@example.org").status_code == 401
    json_header = {"Content-Type": "application/json"}
    bad = client.post("/api/auth/login", content=b"{not json", headers=json_header)
    assert bad.status_code == 400
    assert client.post("/api/auth/login", json={"email": ALICE}).status_code == 400
    # A failure followed by a success must not count toward the lockout.
    assert login(client).status_code == 200


def test_five_failures_lock_the_account(client: httpx.Client) -> None:
    for _ in range(5):
        assert login(client, "lockme@example.org", "wrong").status_code == 401
    locked = login(client, "lockme@example.org")
    assert locked.status_code == 423
    assert "locked_until" in locked.json()


def test_fault_500_breaks_health_and_login(client: httpx.Client, live_app: Deployment) -> None:
    assert client.post("/_fault", json={"mode": "500"}).status_code == 200
    assert client.get("/health").status_code == 500
    assert login(client).status_code == 500
    assert client.post("/_fault", json={"mode": "none"}).status_code == 200
    assert client.get("/health").status_code == 200
    assert "ERROR" in live_app.log_text()


def test_fault_401_rejects_good_credentials(client: httpx.Client) -> None:
    client.post("/_fault", json={"mode": "401"})
    assert login(client).status_code == 401
    assert client.get("/health").status_code == 200


def test_fault_slow_and_hang(client: httpx.Client) -> None:
    client.post("/_fault", json={"mode": "slow", "delay": 0.6})
    began = time.monotonic()
    assert client.get("/health").status_code == 200
    assert time.monotonic() - began >= 0.6
    client.post("/_fault", json={"mode": "hang"})
    with pytest.raises(httpx.ReadTimeout):
        client.get("/health", timeout=0.5)
    # The server stays threaded: clearing the fault still works while a request hangs.
    client.post("/_fault", json={"mode": "none"})
    assert client.get("/health", timeout=2.0).status_code == 200


def test_fault_rejects_unknown_mode(client: httpx.Client) -> None:
    assert client.post("/_fault", json={"mode": "explode"}).status_code == 400


def test_downgrade_and_upgrade_while_running(fresh_app: Callable[..., Deployment]) -> None:
    dep = fresh_app()
    dep.start()
    assert dep.wait_healthy()["alembic_revision"] == HEAD_REVISION
    dep.run("-m", "alembic", "downgrade", "0001")
    with httpx.Client(base_url=dep.url, timeout=10.0) as http:
        assert http.get("/health").json()["alembic_revision"] == "0001"
        # The code now needs 0003's column: login on the old schema fails loudly, as a real
        # deploy would, while the users themselves survive the downgrade.
        assert login(http).status_code == 500
        with sqlite3.connect(dep.dir / "grading.db") as db:
            assert db.execute("SELECT count(*) FROM users").fetchone()[0] >= 1
        dep.run("-m", "alembic", "upgrade", "head")
        assert http.get("/health").json()["alembic_revision"] == HEAD_REVISION
        assert login(http).status_code == 200
        # Simulate a bad migration that dropped a column the code still needs.
        with sqlite3.connect(dep.dir / "grading.db") as db:
            db.execute("ALTER TABLE users DROP COLUMN failed_login_attempts")
        assert login(http).status_code == 500
    assert "ERROR" in dep.log_text()
    dep.run("-m", "alembic", "downgrade", "base")


def test_health_503_when_db_not_migrated(fresh_app: Callable[..., Deployment]) -> None:
    dep = fresh_app(migrate=False, seed=False)
    dep.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            resp = httpx.get(f"{dep.url}/health", timeout=2.0)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, dep.log_text()
            time.sleep(0.1)
    assert resp.status_code == 503
    assert resp.json()["status"] == "error"


def test_cli_lifecycle_and_stop_closes_port(fresh_app: Callable[..., Deployment]) -> None:
    dep = fresh_app(seed=False)
    assert dep.cli("status").returncode == service.EXIT_NOT_RUNNING
    dep.cli("start", check=True)
    dep.wait_healthy()
    first = service.running_pid(dep.pidfile)
    assert first is not None and dep.cli("status").returncode == 0
    dep.cli("restart", check=True)
    dep.wait_healthy()
    second = service.running_pid(dep.pidfile)
    assert second is not None and second != first
    assert service.stop(dep.pidfile) is True
    assert service.running_pid(dep.pidfile) is None and not dep.pidfile.exists()
    assert not service.is_app_process(second)
    assert not port_open(dep.port)
    assert dep.cli("stop").returncode == 0  # stopping a stopped app is fine
    assert dep.cli("status").returncode == service.EXIT_NOT_RUNNING


def test_broken_deploy_leaves_status_not_running(fresh_app: Callable[..., Deployment]) -> None:
    dep = fresh_app(migrate=False, seed=False)
    app_py = dep.dir / "app.py"
    source = app_py.read_text()
    anchor = "\nfrom schema import"
    assert anchor in source
    # Raise among the imports, where a real broken deploy (bad import, typo) would fail.
    broken = '\nraise RuntimeError("simulated broken deploy")' + anchor
    app_py.write_text(source.replace(anchor, broken, 1))
    dep.cli("start", check=True)
    deadline = time.monotonic() + 5
    while dep.cli("status").returncode != service.EXIT_NOT_RUNNING:
        assert time.monotonic() < deadline, "broken app still reported as running"
        time.sleep(0.1)
    assert "simulated broken deploy" in dep.log_text()


def test_refuses_non_loopback_host(fresh_app: Callable[..., Deployment]) -> None:
    dep = fresh_app(migrate=False, seed=False)
    dep.env["SAMPLEAPP_HOST"] = "0.0.0.0"
    proc = dep.run("app.py", check=False)
    assert proc.returncode != 0
    assert "refusing" in proc.stderr and "ERROR" in proc.stderr

"""Lost Redis sessions, end to end on real parts: the sample app keeps its bearer sessions and
reset tokens in the fixtures' redis-server; a FLUSHDB loses them; the daemon's redis probe sees
the collapse, the tree classifies data_corruption and the sessions executor puts back every key
of the snapshot taken before the loss. The user's session works again; the timeline is complete.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pytest_redis.executor import RedisExecutor

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.recovery.support import wait_healthy
from tests.recovery.test_e2e_recovery import (
    CHECKLIST,
    assert_timeline,
    catalog,
    incident,
    show,
    steps,
    verified_backup,
)

pytestmark = pytest.mark.e2e

SESSIONS = 12
RESTORE = ["restore_sessions", "check_sessions_restored"]


def redis_config(ws: Workspace, proc: RedisExecutor, url_file: Path, policy: str) -> str:
    return f"""
[targets.grading.probes.sessions]
kind = "redis"
host = "{proc.host}"
port = {proc.port}
session_pattern = "session:*"
sessions_max_drop = 0.5
sessions_baseline_min = 5
interval = "300ms"
timeout = "2s"
failure_threshold = 1

[targets.grading.redis]
url_file = "{url_file}"
session_keys = ["session:*"]
token_keys = ["password_reset:*"]
command_timeout = "10s"

[targets.grading.backups]
interval = "1h"
keep = "7d"

[targets.grading.policy]
{policy}
"""


def log_in(ws: Workspace) -> str:
    email, password = DEMO_USER
    r = httpx.post(f"{ws.url}/api/auth/login", json={"email": email, "password": password},
                   timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def me(ws: Workspace, token: str) -> int:
    r = httpx.get(f"{ws.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return r.status_code


@pytest.fixture
def app_on_redis(workspace: Workspace, redis_proc: RedisExecutor,
                 redisdb: redis.Redis) -> Workspace:
    """The grading app with its sessions in the fixtures' Redis (redisdb empties it after)."""
    redisdb.flushdb()  # the server is the worker's: another file's test may have left keys
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    workspace.env_file.write_text(workspace.env_file.read_text() + f"REDIS_URL={url}\n")
    workspace.start()
    wait_healthy(workspace)
    return workspace


def start(ws: Workspace, proc: RedisExecutor, smtp: SmtpSink, start_daemon: Any,
          tmp_path: Path, policy: str) -> DaemonProcess:
    url_file = tmp_path / "redis-url"
    url_file.write_text(f"redis://{proc.host}:{proc.port}/0\n")
    url_file.chmod(0o600)
    return start_daemon(ws.config_toml(smtp.port, targets_extra=redis_config(
        ws, proc, url_file, policy)))


def ready(d: DaemonProcess, ws: Workspace) -> dict[str, Any]:
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()}")
    found = wait_for(lambda: verified_backup(d, "sessions"), 20, "a verified sessions snapshot")
    assert isinstance(found, dict)
    return found


def test_flushed_sessions_are_restored_from_the_snapshot(
        app_on_redis: Workspace, redis_proc: RedisExecutor, redisdb: redis.Redis,
        smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = app_on_redis
    tokens = [log_in(ws) for _ in range(SESSIONS)]
    redisdb.set("password_reset:carol", "3", ex=900)
    d = start(ws, redis_proc, smtp, start_daemon, tmp_path, "auto_destructive = true\n")
    snapshot = ready(d, ws)
    assert json.loads(snapshot["versions"])["sessions"] == SESSIONS

    redisdb.flushdb()  # an operator's slip, or an eviction storm: every user is logged out
    assert me(ws, tokens[0]) == 401

    inc = wait_for(lambda: incident(d, "resolved"), 60, f"sessions restored\n{d.log_text()}")
    report = show(d, inc["id"])
    assert report["incident_class"] == "data_corruption"
    assert f"restoring the lost sessions and tokens from snapshot #{snapshot['id']}" in \
        report["reason"]
    assert steps(report) == [(n, "done") for n in [*CHECKLIST, *RESTORE, "verify"]]
    assert_timeline(report)
    restored = next(s for s in report["steps"] if s["name"] == "restore_sessions")
    assert restored["detail"].startswith(
        f"{SESSIONS + 1} session and token key(s) restored from snapshot #{snapshot['id']}")
    assert all(me(ws, t) == 200 for t in tokens)
    assert redisdb.get("password_reset:carol") == b"3" and 0 < redisdb.ttl("password_reset:carol")
    # The state found at the incident was snapshotted first, as evidence. (A key written since
    # the snapshot is kept, not overwritten: tests/recovery/test_redis_sessions.py.)
    evidence = [b for b in catalog(d, "sessions") if json.loads(b["versions"]).get("incident")]
    assert len(evidence) == 1 and json.loads(evidence[0]["versions"])["sessions"] == 0
    # No session token is in the journal, the report or the log: keys live in the snapshot file.
    with closing(d.db()) as db:
        journal = "\n".join(db.iterdump())
    for text in (journal, d.log_text(), json.dumps(report)):
        assert not any(t in text for t in tokens)


def test_flushed_sessions_wait_for_approval_by_default(
        app_on_redis: Workspace, redis_proc: RedisExecutor, redisdb: redis.Redis,
        smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = app_on_redis
    tokens = [log_in(ws) for _ in range(SESSIONS)]
    d = start(ws, redis_proc, smtp, start_daemon, tmp_path, "")
    ready(d, ws)
    redisdb.flushdb()
    inc = wait_for(lambda: incident(d, "awaiting_approval"), 30, f"approval\n{d.log_text()}")
    assert "restore_sessions" in inc["reason"] and "logouts, come back" in inc["reason"]
    assert me(ws, tokens[0]) == 401  # nothing was put back without a person
    d.result("approve", id=inc["id"])
    wait_for(lambda: incident(d, "resolved"), 60, f"restore resolved\n{d.log_text()}")
    assert_timeline(show(d, inc["id"]), "approved")
    assert all(me(ws, t) == 200 for t in tokens)

"""backup and backups against a target with a real SQLite database: the store takes, verifies and
catalogs the copy; the emergency commands find the same database through [database]."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink, wait_for
from tests.control.conftest import database, login, ok_json, rollbackctl, seed

pytestmark = pytest.mark.e2e


def test_backup_now_is_taken_verified_and_cataloged(workspace: Workspace, smtp: SmtpSink,
                                                    start_daemon) -> None:
    ws = workspace
    seed(ws, "admin@example.com", "an admin's passphrase", admin=True)
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=f"""
[targets.grading.database]
kind = "sqlite"
path = "{database(ws)}"

[targets.grading.accounts]
"""))
    # The scheduler takes the first backup at start; a manual one comes on top of it.
    wait_for(lambda: ok_json(d, "backups", "grading"), 20, "the scheduled backup")
    before = len(ok_json(d, "backups", "grading"))
    out = rollbackctl(d, "--json", "backup", "grading")
    assert out.returncode == 0, out.stderr
    (taken,) = json.loads(out.stdout)
    assert taken["kind"] == "database" and taken["verified"] is True
    copy = Path(taken["path"])
    assert copy.is_file() and hashlib.sha256(copy.read_bytes()).hexdigest() == taken["sha256"]
    rows = ok_json(d, "backups", "grading")
    assert len(rows) == before + 1 and rows[0]["id"] == taken["id"]  # newest first
    assert rows[0]["versions"]["reason"].startswith("manual by uid")
    assert rollbackctl(d, "backup", "grading", "--kind", "key").returncode == 1

    # [accounts] without a path of its own uses [database]'s file.
    for _ in range(5):
        login(ws, "admin@example.com", "wrong")
    assert login(ws, "admin@example.com", "an admin's passphrase").status_code == 423
    assert rollbackctl(d, "unlock-admin", "grading", "admin@example.com").returncode == 0
    assert login(ws, "admin@example.com", "an admin's passphrase").status_code == 200

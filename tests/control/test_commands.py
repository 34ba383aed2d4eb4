"""Every read-and-steer command end to end: the real rollbackctl against one running daemon."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.journal.store import Journal
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.control.conftest import audit_rows, ok_json, rollbackctl

pytestmark = pytest.mark.e2e


@dataclass
class Live:
    ws: Workspace
    d: DaemonProcess
    good: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("commands")
    ws = Workspace.create(root / "ws")
    smtp = SmtpSink()
    smtp.controller.start()
    config = root / "rollbackd.toml"
    config.write_text(ws.config_toml(smtp.port))
    d = DaemonProcess(config, ws.root / "state" / "control.sock", ws.root / "state",
                      root / "daemon.log")
    try:
        ws.start()
        d.start()
        good = ws.head()
        wait_for(lambda: known_good(d, good), 20, "v1 known-good")
        yield Live(ws, d, good)
    finally:
        if d.proc is not None:
            d.stop()
        ws.stop()
        smtp.controller.stop()


def test_help_names_every_command(live: Live) -> None:
    out = rollbackctl(live.d, "help")
    assert out.returncode == 0, out.stderr
    for name in ("status", "rollback", "known-good", "mark-bad", "unmark", "audit", "backup",
                 "backups", "unlock-admin", "emergency-admin", "lockdown", "approve", "deny"):
        assert f"\n{name} " in f"\n{out.stdout}", name


def test_status_lists_overrides_with_expiry_and_reason(live: Live) -> None:
    out = rollbackctl(live.d, "silence", "grading", "--for", "10m", "--reason", "db migration")
    assert out.returncode == 0, out.stderr
    try:
        status = ok_json(live.d, "status")
        (o,) = status["overrides"]
        assert (o["kind"], o["target"], o["reason"], o["by"]) == \
            ("silence", "grading", "db migration", f"uid {os.getuid()}")
        left = datetime.fromisoformat(o["until"]) - datetime.now(UTC)
        assert timedelta(minutes=9) < left <= timedelta(minutes=10)
        human = rollbackctl(live.d, "status").stdout
        assert "overrides:" in human and "db migration" in human and "silence" in human
    finally:
        assert rollbackctl(live.d, "resume", "grading").returncode == 0
    assert ok_json(live.d, "status")["overrides"] == []


def test_known_good_list_mark_bad_and_unmark(live: Live) -> None:
    rows = ok_json(live.d, "known-good", "list", "grading")
    assert [(r["version"], r["state"], r["current"]) for r in rows] == \
        [(live.good, "known-good", True)]
    table = rollbackctl(live.d, "known-good", "list", "grading").stdout
    assert f"* {live.good[:12]}" in table and "known-good" in table

    assert rollbackctl(live.d, "mark-bad", "grading", live.good[:8]).returncode == 2  # --reason
    out = rollbackctl(live.d, "mark-bad", "grading", live.good[:8], "--reason", "leaks memory")
    assert out.returncode == 0, out.stderr
    assert f"{live.good[:12]} marked bad" in out.stdout
    (row,) = ok_json(live.d, "known-good", "list", "grading")
    assert row["state"] == "bad" and row["bad_reason"].startswith("leaks memory (marked by uid")
    again = rollbackctl(live.d, "known-good", "mark-bad", "grading", live.good, "--reason", "x")
    assert again.returncode == 1 and "already marked bad" in again.stderr

    out = rollbackctl(live.d, "unmark", "grading", live.good[:8])
    assert out.returncode == 0, out.stderr
    assert "known-good again" in out.stdout
    assert ok_json(live.d, "known-good", "list", "grading")[0]["state"] == "known-good"

    missing = rollbackctl(live.d, "unmark", "grading", "deadbeef")
    assert missing.returncode == 1 and "not in the ledger" in missing.stderr
    assert rollbackctl(live.d, "known-good", "list", "nope").returncode == 1


def test_rollback_with_nothing_older_has_no_plan(live: Live) -> None:
    out = rollbackctl(live.d, "rollback", "grading", "--dry-run")
    assert out.returncode == 1
    assert "no_plan" in out.stderr and "no known-good version older" in out.stderr
    same = rollbackctl(live.d, "rollback", "grading", "--to", live.good[:10])
    assert same.returncode == 1 and "already deployed" in same.stderr


def test_backups_lists_the_catalog_and_backup_says_what_is_missing(live: Live) -> None:
    journal = Journal(live.d.state_dir / "journal.sqlite3")  # WAL: a second writer is fine
    try:
        bid = journal.backups.add("grading", "database", "/srv/b/1.sqlite3", 4096, "ab" * 32,
                                  0.2, {"alembic_revision": "0003"}, verified=True)
    finally:
        journal.close()
    (row,) = ok_json(live.d, "backups", "grading")
    assert (row["id"], row["kind"], row["verified"], row["versions"]["alembic_revision"]) == \
        (bid, "database", True, "0003")
    assert "/srv/b/1.sqlite3" in rollbackctl(live.d, "backups", "grading").stdout
    assert ok_json(live.d, "backups", "grading", "--kind", "key") == []

    out = rollbackctl(live.d, "backup", "grading")
    assert out.returncode == 1, out.stdout
    assert "not_supported" in out.stderr and "[targets.grading.database]" in out.stderr
    assert len(ok_json(live.d, "backups", "grading")) == 1  # nothing pretended


def test_socket_from_the_environment(live: Live) -> None:
    out = rollbackctl(None, "status", env={"ROLLBACKCTL_SOCKET": str(live.d.socket)})
    assert out.returncode == 0, out.stderr
    assert "grading" in out.stdout
    wrong = rollbackctl(None, "status", env={"ROLLBACKCTL_SOCKET": "/nonexistent/x.sock"})
    assert wrong.returncode == 3 and "no control socket at /nonexistent/x.sock" in wrong.stderr
    # --socket wins over the environment.
    both = rollbackctl(live.d, "status", env={"ROLLBACKCTL_SOCKET": "/nonexistent/x.sock"})
    assert both.returncode == 0, both.stderr


def _raw(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest.mark.parametrize("v", [2, 0, "1", True, None, 1.0])
def test_unsupported_protocol_version_is_refused(live: Live, v: object) -> None:
    before = len(audit_rows(live.d))
    reply = _raw(str(live.d.socket), json.dumps({"v": v, "cmd": "status"}).encode() + b"\n")
    assert reply["ok"] is False and reply["code"] == "bad_version", reply
    assert "version 1" in reply["error"]
    assert len(audit_rows(live.d)) == before  # never reached a command


def test_version_1_and_no_version_are_served(live: Live) -> None:
    for line in (b'{"v": 1, "cmd": "status"}\n', b'{"cmd": "status"}\n'):
        assert _raw(str(live.d.socket), line)["ok"] is True


def test_audit_lists_and_verifies(live: Live) -> None:
    rows = ok_json(live.d, "audit", "--limit", "3")
    assert len(rows) == 3 and rows[0]["id"] > rows[-1]["id"]  # newest first
    out = rollbackctl(live.d, "audit", "--verify")
    assert out.returncode == 0, out.stderr
    assert "audit chain verified" in out.stdout and "unbroken" in out.stdout
    last = audit_rows(live.d)[-1]
    assert (last["cmd"], json.loads(last["args"]), last["outcome"]) == \
        ("audit", {"verify": True, "limit": 20}, "ok")


def test_secret_looking_arguments_are_redacted_in_the_audit_log(live: Live) -> None:
    reply = _raw(str(live.d.socket), json.dumps(
        {"v": 1, "cmd": "status", "args": {"password": "hunter2", "nested": {"api_token": "t0k"},
                                            "note": "kept"}}).encode() + b"\n")
    assert reply["ok"] is True
    with closing(live.d.db()) as db:
        text = db.execute("SELECT args FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert json.loads(text) == {"password": "<redacted>", "nested": {"api_token": "<redacted>"},
                                "note": "kept"}

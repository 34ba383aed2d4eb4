"""The probe's own account is not everyone's login: the real sample app's lockout, a daemon process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import SmtpSink, wait_for

pytestmark = pytest.mark.e2e

SECOND = ("second@example.com", "another known-good password")


def login_probe(ws: Workspace, password_file: Path, extra: str = "") -> str:
    return f"""
[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{password_file}"
interval = "300ms"
timeout = "5s"
failure_threshold = 2
{extra}"""


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def text(msg: Any) -> str:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    return str(part.get_payload(decode=True).decode())


def locked_until(ws: Workspace, email: str) -> str | None:
    with closing(sqlite3.connect(ws.db_path)) as db:
        row = db.execute("SELECT locked_until FROM users WHERE email = ?", (email,)).fetchone()
    return row[0] if row else None


def test_locked_probe_account_mails_oncall_and_changes_nothing(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = workspace
    ws.start()
    wrong = secret(tmp_path, "probe-password", "a stale password")
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=login_probe(ws, wrong)))

    # The app's own lockout: five refused logins lock the probe's account (HTTP 423).
    wait_for(lambda: len(smtp.messages) == 2, 40, f"two mails\n{d.log_text()}")
    assert locked_until(ws, DEMO_USER[0]) is not None
    assert [" ".join(s.split()) for s in smtp.subjects] == [  # unfolded
        "[rollbackd] grading: probe credentials refused (probe login), nothing changed",
        "[rollbackd] grading: probe account locked (probe login), nothing changed"]
    assert [sorted(to) for to, _ in smtp.messages] == [["oncall@example.com"]] * 2
    body = text(smtp.messages[1][1])
    assert "HTTP 423" in body and "no rollback, no database action" in body
    assert "a stale password" not in body

    status = d.result("status")["targets"][0]
    assert (status["state"], status["incident"]) == ("ok", None)
    assert status["attention"] == ["login: probe account locked"]
    out = subprocess.run([sys.executable, "-m", "rollbackd.daemon.control.ctl", "--socket", str(d.socket),
                          "status"], capture_output=True, text=True, check=True,
                         env={**os.environ}).stdout
    assert "ok, login: probe account locked" in out

    time.sleep(2)  # the lockout goes on: still two mails, no incident, no database touched
    assert len(smtp.messages) == 2
    assert d.result("incidents") == []
    assert d.result("backups", target="grading") == []


def test_second_known_good_account_refused_too_is_auth_broken(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = workspace
    subprocess.run([sys.executable, "seed.py", *SECOND], cwd=ws.app_dir, check=True,
                   env={**os.environ, **ws.env()}, capture_output=True)
    ws.start()
    # A bad release that changed every password would look like this: both accounts refused.
    extra = (f'second_email = "{SECOND[0]}"\n'
             f'second_password_file = "{secret(tmp_path, "second", "not it either")}"\n')
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=login_probe(
        ws, secret(tmp_path, "probe-password", "a stale password"), extra)))
    inc = wait_for(lambda: d.result("incidents"), 40, f"incident\n{d.log_text()}")[0]
    assert inc["class"] == "auth_broken"
    assert f"second account {SECOND[0]} got HTTP 401: both known-good accounts refused" \
        in inc["reason"]


def test_second_account_logging_in_clears_the_app(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    ws = workspace
    subprocess.run([sys.executable, "seed.py", *SECOND], cwd=ws.app_dir, check=True,
                   env={**os.environ, **ws.env()}, capture_output=True)
    ws.start()
    extra = (f'second_email = "{SECOND[0]}"\n'
             f'second_password_file = "{secret(tmp_path, "second", SECOND[1])}"\n')
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=login_probe(
        ws, secret(tmp_path, "probe-password", "a stale password"), extra)))
    wait_for(lambda: len(smtp.messages) == 2, 40, f"two mails\n{d.log_text()}")
    body = text(smtp.messages[1][1])
    assert f"second account {SECOND[0]} got HTTP 200: only the probe account is affected" in body
    assert locked_until(ws, SECOND[0]) is None  # the second account is never locked out
    assert d.result("incidents") == []

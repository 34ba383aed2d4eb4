"""Emergency access against the sample app's real SQLite database and its real login endpoint."""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, wait_for
from tests.control.conftest import accounts_section, login, ok_json, rollbackctl, seed

pytestmark = pytest.mark.e2e

ALICE = ("alice@example.com", "alice's long passphrase")  # admin
BOB = ("bob@example.com", "bob's long passphrase")
EMERGENCY = "rollbackd-emergency@localhost"


def start(ws: Workspace, smtp: SmtpSink, start_daemon, accounts: str = "",
          redis_url: str | None = None) -> DaemonProcess:
    if redis_url:
        ws.env_file.write_text(ws.env_file.read_text() + f"REDIS_URL={redis_url}\n")
    seed(ws, *ALICE, admin=True)
    seed(ws, *BOB)
    ws.start()
    return start_daemon(ws.config_toml(smtp.port, targets_extra=accounts_section(ws, accounts)))


def everything_written(d: DaemonProcess, ws: Workspace, smtp: SmtpSink) -> str:
    """Every log, report, journal row and mail the daemon and the app produced, as text."""
    parts = [d.log_text(), ws.app_log.read_text(errors="replace")]
    parts += [p.read_text(errors="replace") for p in (d.state_dir / "reports").glob("*")]
    with closing(d.db()) as db:
        for table in ("audit", "incidents", "timeline", "steps", "outbox"):
            parts += [json.dumps([*row], default=str) for row in db.execute(f"SELECT * FROM {table}")]
    parts += [m.as_string() for _, m in smtp.messages]
    return "\n".join(parts)


def test_unlock_admin_lets_a_locked_admin_log_in(workspace: Workspace, smtp: SmtpSink,
                                                 start_daemon) -> None:
    ws = workspace
    d = start(ws, smtp, start_daemon)
    for _ in range(5):
        assert login(ws, ALICE[0], "a wrong guess").status_code == 401
    assert login(ws, *ALICE).status_code == 423  # locked, even with the right password

    out = rollbackctl(d, "unlock-admin", "grading", ALICE[0])
    assert out.returncode == 0, out.stderr
    assert f"{ALICE[0]} on grading unlocked (was locked until 20" in out.stdout
    assert login(ws, *ALICE).status_code == 200

    # Failed attempts short of a lockout are cleared too: the next five guesses lock again.
    for _ in range(3):
        assert login(ws, ALICE[0], "a wrong guess").status_code == 401
    cleared = ok_json(d, "unlock-admin", "grading", ALICE[0])
    assert (cleared["was_locked_until"], cleared["failed_attempts"]) == (None, 3)
    for _ in range(4):
        assert login(ws, ALICE[0], "a wrong guess").status_code == 401
    assert login(ws, *ALICE).status_code == 200

    not_admin = rollbackctl(d, "unlock-admin", "grading", BOB[0])
    assert not_admin.returncode == 1 and "not_admin" in not_admin.stderr
    nobody = rollbackctl(d, "unlock-admin", "grading", "eve@example.com")
    assert nobody.returncode == 1 and "no account 'eve@example.com'" in nobody.stderr
    assert rollbackctl(d, "unlock-admin", "grading").returncode == 2


def test_emergency_admin_password_works_once_shown_and_expires(
        workspace: Workspace, smtp: SmtpSink, start_daemon) -> None:
    ws = workspace
    d = start(ws, smtp, start_daemon, 'emergency_ttl = "4s"')
    out = rollbackctl(d, "emergency-admin", "grading")
    assert out.returncode == 0, out.stderr
    assert "shown once" in out.stdout
    password = out.stdout.split("password: ", 1)[1].split()[0]
    assert len(password) >= 32

    ok = login(ws, EMERGENCY, password)
    assert ok.status_code == 200, ok.text
    me = httpx.get(f"{ws.url}/api/me", headers={"Authorization": f"Bearer {ok.json()['token']}"})
    assert me.json()["is_admin"] is True
    assert login(ws, EMERGENCY, password + "x").status_code == 401

    # A second call renews: a new password, and the old one stops working at once.
    again = ok_json(d, "emergency-admin", "grading")
    assert again["created"] is False and again["password"] != password
    assert login(ws, EMERGENCY, password).status_code == 401
    assert login(ws, EMERGENCY, again["password"]).status_code == 200

    wait_for(lambda: login(ws, EMERGENCY, again["password"]).status_code == 401, 10,
             "the emergency password to expire")
    assert login(ws, EMERGENCY, again["password"]).json() == {"error": "account expired"}

    # People are told an emergency admin exists, never its password.
    wait_for(lambda: len([s for s in smtp.subjects if "emergency admin" in s]) == 2, 15,
             "the two emergency-admin mails")
    written = everything_written(d, ws, smtp)
    assert EMERGENCY in written
    for secret in (password, again["password"]):
        assert secret not in written
    with closing(d.db()) as db:
        audited = [json.loads(r[0]) for r in db.execute(
            "SELECT args FROM audit WHERE cmd = 'emergency-admin'")]
    assert audited == [{"target": "grading"}] * 2


def test_lockdown_waits_for_approval_then_leaves_only_the_emergency_admin(
        workspace: Workspace, smtp: SmtpSink, start_daemon, redis_proc, tmp_path: Path) -> None:
    ws = workspace
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    secret = tmp_path / "redis-url"
    secret.write_text(url + "\n")
    d = start(ws, smtp, start_daemon, f'redis_url_file = "{secret}"', redis_url=url)
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        r.flushdb()
        bob_token = login(ws, *BOB).json()["token"]
        assert r.exists(f"session:{bob_token}")
        r.set("reset:abc123", "2")
        r.set("password_reset:def456", "3")
        r.set("cache:grades", "kept")
        emergency = ok_json(d, "emergency-admin", "grading")["password"]

        out = rollbackctl(d, "lockdown", "grading", "--reason", "credential dump on a forum")
        assert out.returncode == 0, out.stderr
        assert "Nothing has changed yet" in out.stdout and "would lock 3 accounts" in out.stdout
        inc_id = int(out.stdout.split("incident ", 1)[1].split(":")[0])
        twice = rollbackctl(d, "lockdown", "grading")
        assert twice.returncode == 1 and f"incident {inc_id}" in twice.stderr

        # Waiting, it changes nothing and does not close itself while the app stays healthy.
        time.sleep(2)
        assert ok_json(d, "show", str(inc_id))["state"] == "awaiting_approval"
        assert login(ws, *ALICE).status_code == 200
        assert ok_json(d, "status")["targets"][0]["incident"] == inc_id

        done = rollbackctl(d, "approve", str(inc_id))
        assert done.returncode == 0, done.stderr
        assert "lockdown started" in done.stdout
        # The runner runs it as a plan, each step journaled before and after it runs.
        wait_for(lambda: ok_json(d, "show", str(inc_id))["state"] == "resolved", 30, "lockdown")

        for email, password in (ALICE, BOB, ("probe@example.com", "correct horse battery staple")):
            assert login(ws, email, password).status_code == 423, email
        assert login(ws, EMERGENCY, emergency).status_code == 200
        me = httpx.get(f"{ws.url}/api/me", headers={"Authorization": f"Bearer {bob_token}"})
        assert me.status_code == 401  # bob's session is gone
        assert sorted(r.keys("*")) == ["cache:grades", *(
            k for k in r.keys("session:*"))]  # only the emergency admin's new session is left
        assert not r.exists("reset:abc123") and not r.exists("password_reset:def456")

        show = ok_json(d, "show", str(inc_id))
        assert show["state"] == "resolved"
        assert [(s["name"], s["state"]) for s in show["steps"]] == [
            ("capture_evidence", "done"), ("lock_accounts", "done"),
            ("delete_sessions", "done"), ("delete_reset_tokens", "done"),
            ("check_lockdown", "done")]
        assert "3 accounts locked" in show["steps"][1]["detail"]
        again = rollbackctl(d, "approve", str(inc_id))
        assert again.returncode == 1 and "bad_state" in again.stderr

        wait_for(lambda: any("LOCKDOWN done" in s for s in smtp.subjects), 15, "lockdown mail")
        rcpts = {a for to, m in smtp.messages if "LOCKDOWN" in str(m["Subject"]) for a in to}
        assert rcpts == {"oncall@example.com", "devops-lead@example.com"}
        assert any("waiting for approval" in s for s in smtp.subjects)
        written = everything_written(d, ws, smtp)
        for secret_text in (emergency, *ALICE[1:], *BOB[1:], url.split("//")[1]):
            assert secret_text not in written.replace(str(secret), "")
    finally:
        r.close()


def test_lockdown_denied_changes_nothing(workspace: Workspace, smtp: SmtpSink,
                                         start_daemon) -> None:
    ws = workspace
    d = start(ws, smtp, start_daemon)
    inc_id = ok_json(d, "lockdown", "grading")["id"]
    # A manual rollback neither takes the waiting lockdown over nor closes it.
    assert "no_plan" in rollbackctl(d, "rollback", "grading").stderr
    assert ok_json(d, "show", str(inc_id))["state"] == "awaiting_approval"
    out = rollbackctl(d, "deny", str(inc_id))
    assert out.returncode == 0, out.stderr
    show = ok_json(d, "show", str(inc_id))
    assert show["state"] == "denied" and show["steps"] == []
    assert "denied" in [e["event"] for e in show["timeline"]]
    assert login(ws, *ALICE).status_code == 200
    assert rollbackctl(d, "approve", str(inc_id)).returncode == 1


def test_without_an_accounts_section_emergency_access_says_what_to_configure(
        workspace: Workspace, smtp: SmtpSink, start_daemon) -> None:
    ws = workspace
    ws.start()
    d = start_daemon(ws.config_toml(smtp.port))
    for argv in (["unlock-admin", "grading", ALICE[0]], ["emergency-admin", "grading"],
                 ["lockdown", "grading"]):
        out = rollbackctl(d, *argv)
        assert out.returncode == 1, argv
        assert "not_configured" in out.stderr
        assert "targets.grading.accounts is not configured" in out.stderr
    assert ok_json(d, "incidents") == []

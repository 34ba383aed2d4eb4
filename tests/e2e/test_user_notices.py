"""The users' notice at the end of the lockdown, against a real daemon, the real sample app and
a real SMTP server (aiosmtpd): thousands of users each mailed exactly once at the configured
rate, across a kill -9 in the middle; the app's own endpoint called exactly once across a
kill -9 at both points of its step."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, free_port, wait_for
from tests.control.conftest import accounts_section, rollbackctl
from tests.reliability.kill9 import SIGKILLED, restart
from tests.reliability.support import journal_rows, unsent, wait_exit

pytestmark = pytest.mark.e2e

NOTICE = ".user-notice."


class TimedSink:
    """A real aiosmtpd server that keeps each accepted message with the time it arrived, and
    can SIGKILL a process in the middle of the n-th user notice's SMTP transaction (before it
    answers, so that message was never accepted)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[float, list[str], email.message.Message]] = []
        self.kill_at: tuple[int, int] | None = None  # (n-th notice, pid)
        self.notices_seen = 0
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                if NOTICE in str(msg["Message-ID"]):
                    sink.notices_seen += 1
                    if sink.kill_at and sink.notices_seen == sink.kill_at[0]:
                        os.kill(sink.kill_at[1], signal.SIGKILL)
                        sink.kill_at = None
                        return "451 4.3.0 the client died"  # never accepted
                sink.messages.append((time.monotonic(), list(envelope.rcpt_tos), msg))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def notices(self) -> list[tuple[float, str, str]]:
        """(arrival, recipient, Message-ID) of every accepted user notice."""
        return [(at, rcpt, str(m["Message-ID"])) for at, rcpts, m in self.messages
                if NOTICE in str(m["Message-ID"]) for rcpt in rcpts]

    def others(self) -> list[email.message.Message]:
        return [m for _, _, m in self.messages if NOTICE not in str(m["Message-ID"])]


@pytest.fixture
def sink() -> Iterator[TimedSink]:
    s = TimedSink()
    s.controller.start()
    yield s
    s.controller.stop()


def add_users(ws: Workspace, n: int) -> list[str]:
    """n users straight into the app's SQLite users table (bcrypt for thousands would take
    minutes; nobody logs in as them)."""
    addresses = [f"user{i:05d}@example.org" for i in range(n)]
    with closing(sqlite3.connect(ws.db_path, timeout=10)) as db, db:
        db.executemany("INSERT INTO users (email, password_hash, is_admin, "
                       "failed_login_attempts) VALUES (?, 'x', 0, 0)",
                       [(a,) for a in addresses])
    with closing(sqlite3.connect(ws.db_path)) as db:
        return sorted(str(r[0]) for r in db.execute("SELECT email FROM users"))


def daemon(ws: Workspace, port: int, tmp_path: Path, notices: str,
           env: dict[str, str] | None = None) -> DaemonProcess:
    from rollbackd.daemon.config import load_config

    text = ws.config_toml(port, extra="test_hooks = true",
                          targets_extra=accounts_section(ws) +
                          f"\n[targets.grading.user_notices]\n{notices}\n")
    config = tmp_path / "rollbackd.toml"
    config.write_text(text)
    cfg = load_config(config)
    return DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir,
                         tmp_path / "daemon.log", env or {})


def state(d: DaemonProcess, incident: int) -> str:
    return str(journal_rows(d, "SELECT state FROM incidents WHERE id = ?", incident)[0][0])


def request_lockdown(d: DaemonProcess) -> int:
    inc = int(d.result("lockdown", target="grading", reason="credential dump")["id"])
    wait_for(lambda: not unsent(d), 20, "the lockdown request mail")
    reply = d.ctl("approve", id=inc)
    assert reply["ok"], reply
    return inc


def resume_after_kill(d: DaemonProcess, incident: int, step: str) -> str:
    """Restart the killed daemon: the cut-off step is checked and the incident held; a person
    approves and the plan goes on. Returns what the restart found of the step."""
    d.env.pop("ROLLBACKD_CRASH_AT_STEP", None)
    d.env.pop("ROLLBACKD_CRASH_AFTER_STEP", None)
    restart(d)
    wait_for(lambda: state(d, incident) == "held", 30, f"held\n{d.log_text()[-3000:]}")
    reason = str(journal_rows(d, "SELECT held_reason FROM incidents WHERE id = ?",
                              incident)[0][0])
    assert f"step {step} was interrupted" in reason, reason
    reply = d.ctl("approve", id=incident)
    assert reply["ok"], reply
    return reason


def busiest_window(times: list[float], window: float) -> int:
    """The most arrivals within any `window` seconds."""
    times, best, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- rollbackd mails every user --------------------------------------------------------------

USERS = 3000
RATE = 50.0
KILL_AT = 1200


def test_three_thousand_users_each_mailed_once_at_the_rate_across_a_kill9(
        workspace: Workspace, sink: TimedSink, tmp_path: Path) -> None:
    ws = workspace
    everyone = add_users(ws, USERS)
    ws.start()
    d = daemon(ws, sink.port, tmp_path, f'via = "mail"\nrate = {RATE}\n'
               'app_url = "https://grading.example.edu"\ntimeout = "10m"\n')
    restart(d)
    try:
        assert d.proc is not None
        sink.kill_at = (KILL_AT, d.proc.pid)  # SIGKILL in the middle of the 1,200th mail
        inc = request_lockdown(d)
        assert wait_exit(d, 120, "the kill in the middle of the mailing") == SIGKILLED
        # What the journal says was sent is exactly what the server accepted.
        before = journal_rows(d, "SELECT address FROM user_notices WHERE incident_id = ? "
                                 "AND state = 'sent'", inc)
        assert len(before) == KILL_AT - 1 == len(sink.notices())
        reason = resume_after_kill(d, inc, "notify_users")
        assert f"{KILL_AT - 1:,} of {USERS + 1:,} users' mails were settled" in reason
        wait_for(lambda: state(d, inc) == "resolved", 120,
                 f"resolved\n{d.log_text()[-3000:]}")

        got = sink.notices()
        per_address = Counter(rcpt for _, rcpt, _ in got)
        # Everyone (the demo user too) but the emergency account, each exactly once.
        assert per_address == Counter(everyone), (
            f"{len(per_address)} addresses, duplicates "
            f"{[a for a, n in per_address.items() if n > 1][:5]}, missing "
            f"{sorted(set(everyone) - set(per_address))[:5]}")
        assert len({mid for _, _, mid in got}) == len(everyone)  # one Message-ID per user
        # The rate: no 5-second window holds more than the rate allows (10% and one mail of
        # slack for timer jitter); sub-second timing is not judged.
        busiest = busiest_window([at for at, _, _ in got], 5.0)
        assert busiest <= RATE * 5 * 1.1 + 1
        assert busiest >= RATE * 5 * 0.5  # and the throttle, not a stall, set the pace
        first = got[0][2]
        msg = next(m for _, _, m in sink.messages if str(m["Message-ID"]) == first)
        assert "reset your password" in str(msg["Subject"]).lower()
        assert "https://grading.example.edu" in msg.get_body(("plain",)).get_content()  # type: ignore[attr-defined]

        counts = journal_rows(d, "SELECT state, COUNT(*) FROM user_notices "
                                 "WHERE incident_id = ? GROUP BY state", inc)
        assert {r[0]: r[1] for r in counts} == {"sent": len(everyone)}
        summary = f"{len(everyone):,} sent, 0 failed"
        report = (d.state_dir / "reports" / f"incident-{inc}.md").read_text()
        assert f"User notices (password_reset): {summary}" in report
        shown = rollbackctl(d, "show", str(inc))
        assert f"user notices (password_reset): {summary}" in shown.stdout, shown.stdout
        # The contacts heard of the lockdown as before; no contact got a user's notice.
        assert all(NOTICE not in str(m["Message-ID"]) for m in sink.others())
        assert any("lockdown" in str(m["Subject"]).lower() for m in sink.others())
    finally:
        d.stop()


@pytest.mark.parametrize("point", ["at", "after"])
def test_crash_hooks_around_one_users_mail(workspace: Workspace, sink: TimedSink,
                                           tmp_path: Path, point: str) -> None:
    """The hooks' two points: before the 301st user's mail is sent (everyone exactly once),
    and after the server accepted the 300th and before it was journaled sent: the one way a
    user gets a second copy, which then has the same Message-ID."""
    ws = workspace
    everyone = add_users(ws, 400)
    ws.start()
    var, n = (("ROLLBACKD_CRASH_AT_STEP", 301) if point == "at"
              else ("ROLLBACKD_CRASH_AFTER_STEP", 300))
    d = daemon(ws, sink.port, tmp_path, 'via = "mail"\nrate = 200\n',
               env={var: f"notify_users/{n}"})
    restart(d)
    try:
        inc = request_lockdown(d)
        assert wait_exit(d, 60, f"the kill {point} user {n}") == SIGKILLED
        resume_after_kill(d, inc, "notify_users")
        wait_for(lambda: state(d, inc) == "resolved", 60, f"resolved\n{d.log_text()[-3000:]}")
        got = sink.notices()
        per_address = Counter(rcpt for _, rcpt, _ in got)
        ids = {rcpt: {mid for _, r, mid in got if r == rcpt} for rcpt in per_address}
        assert set(per_address) == set(everyone)
        assert all(len(m) == 1 for m in ids.values())  # one Message-ID per user, always
        twice = sorted(a for a, k in per_address.items() if k > 1)
        if point == "at":
            assert twice == []
        else:
            assert twice == [everyone[n - 1]] and per_address[twice[0]] == 2
    finally:
        d.stop()


# -- the app tells its users: its endpoint, called once ----------------------------------------

APP_USERS = 20


@pytest.mark.parametrize("point", ["at", "after"])
def test_app_endpoint_called_exactly_once_across_kill9(workspace: Workspace, sink: TimedSink,
                                                       tmp_path: Path, point: str) -> None:
    ws = workspace
    everyone = add_users(ws, APP_USERS)
    token = tmp_path / "app-admin-token"
    token.write_text("s3cret-admin-token\n")
    calls = tmp_path / "notices.jsonl"
    ws.env_file.write_text(ws.env_file.read_text() + "SAMPLEAPP_ADMIN_TOKEN=s3cret-admin-token\n"
                           f"SAMPLEAPP_NOTICE_LOG={calls}\nSAMPLEAPP_SMTP=127.0.0.1:{sink.port}\n")
    ws.start()
    var = "ROLLBACKD_CRASH_AT_STEP" if point == "at" else "ROLLBACKD_CRASH_AFTER_STEP"
    d = daemon(ws, sink.port, tmp_path,
               f'via = "endpoint"\nurl = "{ws.url}/api/admin/user-notices"\n'
               f'token_file = "{token}"\ntimeout = "60s"\n', env={var: "notify_users"})
    restart(d)
    try:
        inc = request_lockdown(d)
        assert wait_exit(d, 60, f"the kill {point} notify_users") == SIGKILLED
        made = calls.read_text().splitlines() if calls.exists() else []
        assert len(made) == (0 if point == "at" else 1)
        found = resume_after_kill(d, inc, "notify_users")
        assert ("its effect is absent" if point == "at" else "found done") in found, found
        wait_for(lambda: state(d, inc) == "resolved", 60, f"resolved\n{d.log_text()[-3000:]}")
        records = [json.loads(line) for line in calls.read_text().splitlines()]
        # One request reached the app: no replay was needed, nobody was told twice.
        assert len(records) == 1 and records[0]["event"] == "password_reset"
        assert records[0]["told"] == len(everyone) and records[0]["incident"] == inc
        app_mail = Counter(str(m["To"]) for m in sink.others()
                           if str(m["Subject"]) == "Reset your grading password")
        assert app_mail == Counter(everyone)
        steps = journal_rows(d, "SELECT state FROM steps WHERE incident_id = ? AND "
                                "name = 'notify_users'", inc)
        assert Counter(r[0] for r in steps) == (
            {"interrupted": 1, "done": 1} if point == "at" else {"done": 1})
    finally:
        d.stop()


# -- the key disaster: the data-loss notice after the reset ------------------------------------

def test_key_reset_ends_with_a_data_loss_notice_to_every_user(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    """The lost key's procedure (approved): clear, fresh key, restart, verify; then every user
    is mailed once that what the key protected must be entered again."""
    from tests.recovery.test_e2e_recovery import data_config, incident, show, steps, toml_list

    ws = workspace
    everyone = add_users(ws, 50)
    canary_file = tmp_path / "canary"
    good = ws.env()["DB_ENCRYPTION_KEY"]
    canary_file.write_text(Fernet(good.encode()).encrypt(b"rollbackd canary").decode() + "\n")
    key = f"""
[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{canary_file}"
interval = "500ms"
failure_threshold = 2

[targets.grading.key]
file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary_file = "{canary_file}"
restart = {toml_list(ws.restart_argv())}
command_timeout = "30s"
"""
    ws.env_file.write_text(ws.env_file.read_text().replace(good, Fernet.generate_key().decode()))
    ws.start()
    secret = tmp_path / "probe-password"
    secret.write_text(DEMO_USER[1] + "\n")
    extra = data_config(ws, secret, "", key).replace(
        'tables = ["users", "grades"]',
        'tables = ["users", "grades"]\nencrypted_columns = ["users.national_id_encrypted"]')
    extra += accounts_section(ws) + ('\n[targets.grading.user_notices]\nvia = "mail"\n'
                                     'rate = 50\napp_url = "https://grading.example.edu"\n')
    d = start_daemon(ws.config_toml(smtp.port, targets_extra=extra))
    inc = wait_for(lambda: incident(d, "awaiting_approval"), 30, f"approval\n{d.log_text()}")
    assert "tell the users to re-enter what was lost" in inc["reason"]
    assert not [m for _, m in smtp.messages if NOTICE in str(m["Message-ID"])]  # not before
    d.result("approve", id=inc["id"])
    wait_for(lambda: incident(d, "resolved"), 90, f"key reset resolved\n{d.log_text()}")
    report = show(d, inc["id"])
    assert steps(report)[-2:] == [("verify", "done"), ("notify_users", "done")]
    notices = [(rcpts, m) for rcpts, m in smtp.messages if NOTICE in str(m["Message-ID"])]
    assert Counter(r for rcpts, _ in notices for r in rcpts) == Counter(everyone)
    assert all("entered again" in str(m["Subject"]) for _, m in notices)
    assert report["user_notices"]["summary"] == f"{len(everyone)} sent, 0 failed"
    assert report["user_notices"]["event"] == "data_loss"

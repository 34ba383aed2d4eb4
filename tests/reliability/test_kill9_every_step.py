"""kill -9 of the daemon at both points of every step of every plan this machine can drive.

The fault hook (`daemon.test_hooks = true`) SIGKILLs the daemon at one of two points of a step:
ROLLBACKD_CRASH_AT_STEP=<step> right after it journaled <step> as running and before the step
does anything; ROLLBACKD_CRASH_AFTER_STEP=<step> right after the step did its work and before it
is journaled done (where a blind re-run would repeat a downgrade, a swap, a key restore).

Each plan is walked once per point as one chain of crashes: the daemon dies at step 1; it is
restarted set to die at step 2; start-up recovery checks the cut-off step's effect. Found done:
the step is journaled done and the plan goes on by itself (automatic plans with nothing left
needing approval) or is held saying so; absent or unknown: held. A held incident is approved
(`rollbackctl approve`), the plan resumes, and the daemon dies at step 2; and so on until a last
restart lets the plan finish. At every restart, and at the end:

- the incident is held for a person or goes on by itself as the rules say, in the end resolved;
- every step is journaled done exactly once, interrupted once for every restart that did not
  find it done, and the commands with side effects ran exactly once (counted by a wrapper that
  appends to a marker);
- every mail the journal queued reached the real SMTP server once per recipient (by
  Message-ID), none is left unsent, and the incident's mails are exactly: one opened (or
  started), one held per hold, one resolved (no event got a second Message-ID);
- the journal passes PRAGMA integrity_check.

ROLLBACKD_KILL9_TABLE=<file> appends what each restart did, one JSON line per plan and point
(docs/reliability.md has the table).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from rollbackd.daemon.control.ctl import Unreachable
from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.control.conftest import accounts_section, seed
from tests.control.conftest import login as login_as
from tests.recovery.support import (
    add_bad_migration,
    add_grades,
    corrupt_table,
    db_path,
    integrity,
    login,
    migrate_argv,
    revision,
    service_argv,
    use_wal,
    wait_healthy,
)
from tests.reliability.support import (
    assert_no_mail_lost,
    counted,
    integrity_ok,
    journal_rows,
    runs,
    step_counts,
    toml_argv,
    unsent,
    wait_exit,
)

pytestmark = pytest.mark.e2e

POINTS = {"at": "ROLLBACKD_CRASH_AT_STEP", "after": "ROLLBACKD_CRASH_AFTER_STEP"}
SIGKILLED = -9
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]
both_points = pytest.mark.parametrize("point", list(POINTS))


def daemon_for(tmp_path: Path, text: str, point: str, first: str) -> DaemonProcess:
    from rollbackd.daemon.config import load_config

    config = tmp_path / "rollbackd.toml"
    config.write_text(text)
    cfg = load_config(config)
    d = DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir, tmp_path / "daemon.log")
    crash_next(d, point, first)
    return d


def crash_next(d: DaemonProcess, point: str, step: str | None) -> None:
    """The next start dies at `step` (None: it does not die)."""
    for var in POINTS.values():
        d.env.pop(var, None)
    if step is not None:
        d.env[POINTS[point]] = step


def restart(d: DaemonProcess) -> None:
    """Start the daemon; a plan that goes on by itself may kill it again before it answers."""
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "rollbackd.daemon.cli", "run", "--config", str(d.config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **d.env})
    proc = d.proc

    def up_or_killed() -> bool:
        if proc.poll() is not None:
            assert proc.returncode == SIGKILLED, f"exited {proc.returncode}\n{d.log_text()}"
            return True
        try:
            return bool(d.ctl("status")["ok"])
        except Exception:  # noqa: BLE001 - still starting
            return False

    wait_for(up_or_killed, 20, f"daemon ready\n{d.log_text()[-3000:]}")


def last_step(d: DaemonProcess) -> tuple[int, str, str]:
    row = journal_rows(d, "SELECT id, name, state FROM steps ORDER BY id DESC LIMIT 1")[0]
    return row["id"], row["name"], row["state"]


def incident_row(d: DaemonProcess) -> dict[str, object]:
    return dict(journal_rows(d, "SELECT id, state, held_reason FROM incidents "
                                "WHERE plan_kind IS NOT NULL ORDER BY id DESC LIMIT 1")[0])


def events(d: DaemonProcess, incident_id: int, event: str) -> int:
    return len(journal_rows(d, "SELECT 1 FROM timeline WHERE incident_id = ? AND event = ?",
                            incident_id, event))


def approve(d: DaemonProcess, incident_id: int) -> None:
    """A person resumes the held incident. The plan may kill the daemon before the reply."""
    try:
        reply = d.ctl("approve", id=incident_id)
    except (Unreachable, OSError, ValueError):
        return
    assert reply["ok"] or d.proc is None or d.proc.poll() is not None, reply


@dataclass
class Walk:
    point: str
    incident: int = 0
    holds: int = 0
    did: list[tuple[str, str]] = field(default_factory=list)
    """(step, what the restart after the crash in it did)."""

    def interrupted(self, step: str) -> int:
        return sum(1 for s, what in self.did if s == step and "found done" not in what)


def walk(d: DaemonProcess, smtp: SmtpSink, point: str, steps: list[str],
         trigger: Callable[[], object]) -> Walk:
    """Trigger the fault, then walk the chain of crashes at `point` of each of `steps`."""
    w = Walk(point)
    trigger()
    assert wait_exit(d, 60, f"the kill {point} {steps[0]}") == SIGKILLED
    for i, crashed in enumerate(steps):
        step_id, name, state = last_step(d)
        assert (name, state) == (crashed, "running")  # the daemon died inside it
        inc = incident_row(d)
        w.incident = w.incident or int(inc["id"])  # type: ignore[call-overload]
        assert inc["id"] == w.incident  # the same incident: no second one opened beside it
        following = steps[i + 1] if i + 1 < len(steps) else None
        crash_next(d, point, following)
        resumed = events(d, w.incident, "resumed")
        restart(d)
        wait_for(lambda r=resumed: incident_row(d)["state"] == "held"  # type: ignore[misc]
                 or events(d, w.incident, "resumed") > r, 30,
                 f"recovery after {point} {crashed}\n{d.log_text()[-3000:]}")
        settled = journal_rows(d, "SELECT state, detail FROM steps WHERE id = ?", step_id)[0]
        found = re.match(r"(found done)|interrupted; effect (\w+)", settled["detail"])
        assert found, settled["detail"]
        what = "found done" if found[1] else f"effect {found[2]}"
        assert settled["state"] == ("done" if found[1] else "interrupted")
        if events(d, w.incident, "resumed") > resumed:
            w.did.append((crashed, f"{what}, went on by itself"))
        else:
            w.holds += 1
            w.did.append((crashed, f"{what}, held, approved"))
            reason = str(incident_row(d)["held_reason"])
            assert f"step {crashed} was interrupted" in reason
            # The person is told, and the mail is out before they act.
            wait_for(lambda: sum("HELD" in s for s in smtp.subjects) == w.holds
                     and not unsent(d), 20, f"held mail after {crashed}")
            approve(d, w.incident)
        if following:
            assert wait_exit(d, 60, f"the kill {point} {following}") == SIGKILLED
    wait_for(lambda: incident_row(d)["state"] == "resolved", 60,
             f"resolved\n{d.log_text()[-3000:]}")
    return w


def mail_events(d: DaemonProcess, incident_id: int) -> Counter[str]:
    rows = journal_rows(d, "SELECT message_id FROM outbox WHERE incident_id = ?", incident_id)
    return Counter(re.sub(r"-\d+$", "", r["message_id"].split(".")[2].split("@")[0])
                   for r in rows)


def assert_survived(d: DaemonProcess, smtp: SmtpSink, w: Walk, steps: list[str],
                    plan: str, done_mail: str = "resolved") -> None:
    counts = step_counts(d, w.incident)
    assert list(counts) == steps  # in plan order, nothing else ran
    for name in steps:
        expected = Counter({"done": 1, "interrupted": w.interrupted(name)})
        assert counts[name] == +expected, (name, counts[name], w.did)
    assert_no_mail_lost(d, smtp)
    # One mail that the plan acts: "opened", or "started" when a held mail came first.
    mails = mail_events(d, w.incident)
    acting = "started" if mails["started"] else "opened"
    assert mails == {acting: 1, "held": w.holds, done_mail: 1}
    assert integrity_ok(d)
    assert d.stop() == 0
    table = os.environ.get("ROLLBACKD_KILL9_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(json.dumps({"plan": plan, "point": w.point, "did": w.did}) + "\n")


# -- git: deployment_rollback ------------------------------------------------------------------

GIT_STEPS = [*CHECKLIST, "git_checkout", "install_dependencies", "restart_service", "verify"]


@both_points
def test_git_deployment_rollback_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = workspace
    restarts, installs = tmp_path / "restarts", tmp_path / "installs"
    ws.start()
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          restart_argv=counted(ws.restart_argv(), restarts))
    # The broken commit changes app.py: naming it a requirements file makes install run too.
    text = text.replace('command_timeout = "30s"\n', 'command_timeout = "30s"\n'
                        f'install = {toml_argv(counted([sys.executable, "-c", "pass"], installs))}\n'
                        'requirements = ["app.py"]\n', 1)
    d = daemon_for(tmp_path, text, point, GIT_STEPS[0]).start()
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 20, "v1 known-good")
        bad = ""

        def deploy() -> None:
            nonlocal bad
            bad = ws.deploy_broken()

        w = walk(d, smtp, point, GIT_STEPS, deploy)
        assert ws.head() == good and bad != good
        assert (runs(restarts), runs(installs)) == (1, 1)
        wait_healthy(ws)
        assert_survived(d, smtp, w, GIT_STEPS, "git + service")
    finally:
        d.stop()


# -- SQLite: data_recovery (restore a verified backup), database_rollback (downgrade) ----------

def data_section(ws: Workspace, tmp_path: Path, markers: dict[str, Path], policy: str,
                 key: str = "") -> str:
    password = tmp_path / "probe-password"
    password.write_text(DEMO_USER[1] + "\n")
    return f"""
[targets.grading.probes.integrity]
kind = "sqlite_integrity"
path = "{db_path(ws)}"
interval = "500ms"
timeout = "2s"
failure_threshold = 1
full_check_every = "1s"
required_tables = ["users"]

[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{password}"
interval = "500ms"
timeout = "5s"
failure_threshold = 3

[targets.grading.database]
kind = "sqlite"
path = "{db_path(ws)}"
stop = {toml_argv(counted(service_argv(ws, "stop"), markers["stop"]))}
start = {toml_argv(counted(service_argv(ws, "start"), markers["start"]))}
migrate = {toml_argv(counted(migrate_argv(), markers["migrate"]))}
cwd = "{ws.app_dir}"
env_file = "{ws.env_file}"
tables = ["users", "grades"]
command_timeout = "30s"

[targets.grading.backups]
interval = "1h"
keep = "7d"
{key}
[targets.grading.policy]
{policy}
"""


def verified(d: DaemonProcess, kind: str) -> bool:
    return bool(journal_rows(d, "SELECT 1 FROM backups WHERE kind = ? AND verified_at IS NOT NULL",
                             kind))


def data_daemon(ws: Workspace, smtp: SmtpSink, tmp_path: Path, point: str, first: str,
                policy: str, key: str = "") -> tuple[DaemonProcess, dict[str, Path]]:
    markers = {m: tmp_path / m for m in ("stop", "start", "migrate", "restart")}
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          targets_extra=data_section(ws, tmp_path, markers, policy, key))
    d = daemon_for(tmp_path, text, point, first).start()
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()[-3000:]}")
    for kind in ("database", "key") if key else ("database",):
        wait_for(lambda k=kind: verified(d, k), 20, f"a verified {kind} backup")
    return d, markers


RESTORE_STEPS = [*CHECKLIST, "prepare_restore", "swap_database", "check_restored", "start_app",
                 "verify"]


@both_points
def test_sqlite_restore_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = workspace
    use_wal(db_path(ws))
    ws.start()
    add_grades(db_path(ws), 20)
    d, markers = data_daemon(ws, smtp, tmp_path, point, RESTORE_STEPS[0],
                             "auto_destructive = true\nrestore_loss_threshold = 100\n")
    try:
        w = walk(d, smtp, point, RESTORE_STEPS,
                 lambda: corrupt_table(db_path(ws), "ix_grades_user_id"))
        # The swap ran once: one damaged copy kept, the app stopped once and started once.
        copies = sorted(db_path(ws).parent.glob("grading.db.corrupted.*[0-9Z]"))
        assert len(copies) == 1 and integrity(copies[0]) != "ok"
        assert (runs(markers["stop"]), runs(markers["start"]), runs(markers["migrate"])) == (1, 1, 0)
        assert integrity(db_path(ws)) == "ok" and login(ws) == 200
        assert_survived(d, smtp, w, RESTORE_STEPS, "SQLite restore")
    finally:
        d.stop()


# A release is its code and its schema (issue 18): the bad deploy's schema goes back first, then
# its code.
DOWNGRADE_STEPS = [*CHECKLIST, "snapshot_database", "alembic_downgrade", "check_revision",
                   "git_checkout", "install_dependencies", "restart_service", "verify"]


@both_points
def test_alembic_downgrade_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = workspace
    ws.start()
    d, markers = data_daemon(ws, smtp, tmp_path, point, DOWNGRADE_STEPS[0], "auto_destructive = true\n")
    good_rev = revision(db_path(ws))
    v1 = ws.head()

    def bad_migration() -> None:
        add_bad_migration(ws)
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "v2: normalise the password column")
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                       env={**os.environ, **ws.env()}, check=True, capture_output=True)
        ws.restart()

    try:
        w = walk(d, smtp, point, DOWNGRADE_STEPS, bad_migration)
        assert revision(db_path(ws)) == good_rev and login(ws) == 200
        assert ws.head() == v1
        assert runs(markers["migrate"]) == 1
        assert_survived(d, smtp, w, DOWNGRADE_STEPS, "Alembic downgrade (SQLite)")
    finally:
        d.stop()


# -- the Fernet key: key_restore -------------------------------------------------------------

KEY_STEPS = [*CHECKLIST, "restore_key", "restart_app", "verify"]


@both_points
def test_key_restore_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = workspace
    good = ws.env()["DB_ENCRYPTION_KEY"]
    canary = Fernet(good.encode()).encrypt(b"grading canary").decode()
    restarts = tmp_path / "restart"
    key = f"""
[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary = "{canary}"
interval = "500ms"
failure_threshold = 2

[targets.grading.key]
file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary = "{canary}"
restart = {toml_argv(counted(ws.restart_argv(), restarts))}
command_timeout = "30s"
"""
    ws.start()
    d, _ = data_daemon(ws, smtp, tmp_path, point, KEY_STEPS[0], "", key)

    def replace_key() -> None:
        ws.env_file.write_text(ws.env_file.read_text().replace(good, Fernet.generate_key().decode()))
        ws.restart()

    try:
        w = walk(d, smtp, point, KEY_STEPS, replace_key)
        assert ws.env()["DB_ENCRYPTION_KEY"] == good
        assert runs(restarts) == 1
        wait_healthy(ws)
        # The replaced key was backed up once, as evidence, before the good one went back.
        replaced = journal_rows(d, "SELECT * FROM backups WHERE kind = 'key' AND versions LIKE ?",
                                '%"incident"%')
        assert len(replaced) == 1
        assert_survived(d, smtp, w, KEY_STEPS, "key restore")
    finally:
        d.stop()


# -- the mass-breach lockdown: lock accounts, delete sessions and reset tokens -----------------

LOCKDOWN_STEPS = ["capture_evidence", "lock_accounts", "delete_sessions", "delete_reset_tokens",
                  "check_lockdown"]
ACCOUNTS = [("alice@example.com", "alice's long passphrase"),
            ("bob@example.com", "bob's long passphrase")]


@both_points
def test_lockdown_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path, redis_proc: object,
        point: str) -> None:
    ws = workspace
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"  # type: ignore[attr-defined]
    secret = tmp_path / "redis-url"
    secret.write_text(url + "\n")
    ws.env_file.write_text(ws.env_file.read_text() + f"REDIS_URL={url}\n")
    for email, password in ACCOUNTS:
        seed(ws, email, password)
    ws.start()
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          targets_extra=accounts_section(ws, f'redis_url_file = "{secret}"'))
    d = daemon_for(tmp_path, text, point, LOCKDOWN_STEPS[0]).start()
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        r.flushdb()
        for email, password in ACCOUNTS:
            assert login_as(ws, email, password).status_code == 200
        r.set("reset:abc123", "2")
        r.set("cache:grades", "kept")

        def request_and_approve() -> None:
            inc = d.result("lockdown", target="grading", reason="credential dump")["id"]
            # A person approves once the request mail is out: a kill during an SMTP transaction
            # is another fault (the mail is sent again with the same Message-ID).
            wait_for(lambda: not unsent(d), 20, "the lockdown request mail")
            approve(d, inc)

        w = walk(d, smtp, point, LOCKDOWN_STEPS, request_and_approve)
        for email, password in ACCOUNTS:
            assert login_as(ws, email, password).status_code == 423, email
        assert r.keys("*") == ["cache:grades"]
        assert_survived(d, smtp, w, LOCKDOWN_STEPS, "lockdown", done_mail="lockdown")
    finally:
        r.close()
        d.stop()

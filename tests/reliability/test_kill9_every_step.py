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

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import Workspace
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
    revision,
    use_wal,
    wait_healthy,
)
from tests.reliability.kill9 import (
    CHECKLIST,
    GIT_STEPS,
    approve,
    assert_survived,
    both_points,
    daemon_for,
    data_section,
    walk,
)
from tests.reliability.support import counted, journal_rows, runs, toml_argv, unsent

pytestmark = pytest.mark.e2e


# -- git: deployment_rollback ------------------------------------------------------------------



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
    try:
        wait_for(lambda: known_good(d, good), 30, "v1 known-good")
        for kind in ("database", "key") if key else ("database",):
            wait_for(lambda k=kind: verified(d, k), 20, f"a verified {kind} backup")
    except AssertionError as exc:  # the test's own `finally` is not reached: stop it here
        d.stop()
        raise AssertionError(f"{exc}\n{d.log_text()[-3000:]}") from None
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

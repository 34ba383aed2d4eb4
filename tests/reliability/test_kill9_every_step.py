"""kill -9 of the daemon at every step of every plan this machine can drive, then restart.

The fault hook (`daemon.test_hooks = true` and ROLLBACKD_CRASH_AT_STEP=<step>) SIGKILLs the
daemon right after it journaled <step> as running and before the step does anything. Each plan
is walked as one chain of crashes: the daemon dies at step 1; it is restarted set to die at step
2; the incident it finds is held for a person, who approves it (`rollbackctl approve`), so the
plan resumes, re-runs the interrupted step, and the daemon dies at step 2; and so on until a
last restart lets the plan finish. At every restart, and at the end:

- the incident is held for a person (never resumed on its own), in the end resolved;
- every step is journaled done exactly once, interrupted once (where the daemon died), and the
  commands with side effects ran exactly once (counted by a wrapper that appends to a marker);
- every mail the journal queued reached the real SMTP server once per recipient (by
  Message-ID), and none is left unsent;
- the journal passes PRAGMA integrity_check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from daemon.control.ctl import Unreachable
from daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.recovery.support import (
    BAD_REVISION,
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
    incident_in,
    integrity_ok,
    journal_rows,
    runs,
    step_counts,
    toml_argv,
    unsent,
    wait_exit,
)

pytestmark = pytest.mark.e2e

CRASH = "ROLLBACKD_CRASH_AT_STEP"
SIGKILLED = -9
CHECKLIST = ["capture_evidence", "notify", "backup_current", "record_incident", "verify_target"]


def daemon_for(tmp_path: Path, text: str, first_crash: str) -> DaemonProcess:
    from daemon.config import load_config

    config = tmp_path / "rollbackd.toml"
    config.write_text(text)
    cfg = load_config(config)
    return DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir, tmp_path / "daemon.log",
                         {CRASH: first_crash})


def last_step(d: DaemonProcess) -> tuple[str, str]:
    row = journal_rows(d, "SELECT name, state FROM steps ORDER BY id DESC LIMIT 1")[0]
    return row["name"], row["state"]


def approve(d: DaemonProcess, incident_id: int) -> None:
    """A person resumes the held incident. The plan may kill the daemon before the reply."""
    try:
        reply = d.ctl("approve", id=incident_id)
    except (Unreachable, OSError, ValueError):
        return
    assert reply["ok"] or d.proc is None or d.proc.poll() is not None, reply


def crash_at_every_step(d: DaemonProcess, smtp: SmtpSink, steps: list[str],
                        trigger: Callable[[], None]) -> int:
    """Trigger the fault, then walk the chain of crashes over `steps`; the incident's id."""
    trigger()
    assert wait_exit(d, 60, f"the kill at {steps[0]}") == SIGKILLED
    incident_id = 0
    for i, crashed in enumerate(steps):
        # The journal has the step as running: the daemon died inside it.
        assert last_step(d) == (crashed, "running")
        following = steps[i + 1] if i + 1 < len(steps) else None
        if following:
            d.env[CRASH] = following
        else:
            d.env.pop(CRASH, None)
        d.start()
        inc = wait_for(lambda: incident_in(d, "held"), 20, f"held after {crashed}")
        incident_id = incident_id or inc["id"]
        assert inc["id"] == incident_id  # the same incident: no second one opened beside it
        show = d.result("show", id=incident_id)
        assert f"step {crashed} was interrupted" in show["held_reason"]
        assert [s["state"] for s in show["steps"] if s["name"] == crashed][-1] == "interrupted"
        # The person is told, and the mail is out before they act.
        held = f"incident {incident_id} HELD"
        wait_for(lambda h=held: any(h in s for s in smtp.subjects) and not unsent(d), 20,
                 f"held mail after {crashed}")
        approve(d, incident_id)
        if following:
            assert wait_exit(d, 60, f"the kill at {following}") == SIGKILLED
    wait_for(lambda: incident_in(d, "resolved"), 60, f"resolved\n{d.log_text()[-3000:]}")
    return incident_id


def assert_each_step_once(d: DaemonProcess, incident_id: int, steps: list[str]) -> None:
    counts = step_counts(d, incident_id)
    assert list(counts) == steps  # in plan order, nothing else ran
    for name in steps:
        assert counts[name] == Counter({"done": 1, "interrupted": 1}), (name, counts[name])


def assert_survived(d: DaemonProcess, smtp: SmtpSink, incident_id: int, steps: list[str]) -> None:
    assert_each_step_once(d, incident_id, steps)
    # One held mail per crash, plus opened/started and resolved: nothing lost, nothing twice.
    sent = assert_no_mail_lost(d, smtp)
    assert sent >= len(steps) + 1
    assert integrity_ok(d)
    assert d.stop() == 0


# -- git: deployment_rollback ------------------------------------------------------------------

GIT_STEPS = [*CHECKLIST, "git_checkout", "install_dependencies", "restart_service", "verify"]


def test_git_deployment_rollback_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path) -> None:
    ws = workspace
    restarts, installs = tmp_path / "restarts", tmp_path / "installs"
    ws.start()
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          restart_argv=counted(ws.restart_argv(), restarts))
    # The broken commit changes app.py: naming it a requirements file makes install run too.
    text = text.replace('command_timeout = "30s"\n', 'command_timeout = "30s"\n'
                        f'install = {toml_argv(counted([sys.executable, "-c", "pass"], installs))}\n'
                        'requirements = ["app.py"]\n', 1)
    d = daemon_for(tmp_path, text, GIT_STEPS[0]).start()
    try:
        good = ws.head()
        wait_for(lambda: known_good(d, good), 20, "v1 known-good")
        bad = ""

        def deploy() -> None:
            nonlocal bad
            bad = ws.deploy_broken()

        inc = crash_at_every_step(d, smtp, GIT_STEPS, deploy)
        assert ws.head() == good and bad != good
        assert (runs(restarts), runs(installs)) == (1, 1)
        wait_healthy(ws)
        assert_survived(d, smtp, inc, GIT_STEPS)
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


def data_daemon(ws: Workspace, smtp: SmtpSink, tmp_path: Path, first: str, policy: str,
                key: str = "") -> tuple[DaemonProcess, dict[str, Path]]:
    markers = {m: tmp_path / m for m in ("stop", "start", "migrate", "restart")}
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          targets_extra=data_section(ws, tmp_path, markers, policy, key))
    d = daemon_for(tmp_path, text, first).start()
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()[-3000:]}")
    for kind in ("database", "key") if key else ("database",):
        wait_for(lambda k=kind: verified(d, k), 20, f"a verified {kind} backup")
    return d, markers


RESTORE_STEPS = [*CHECKLIST, "prepare_restore", "swap_database", "check_restored", "start_app",
                 "verify"]


def test_sqlite_restore_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path) -> None:
    ws = workspace
    use_wal(db_path(ws))
    ws.start()
    add_grades(db_path(ws), 20)
    d, markers = data_daemon(ws, smtp, tmp_path, RESTORE_STEPS[0],
                             "auto_destructive = true\nrestore_loss_threshold = 100\n")
    try:
        inc = crash_at_every_step(
            d, smtp, RESTORE_STEPS, lambda: corrupt_table(db_path(ws), "ix_grades_user_id"))
        # The swap ran once: one damaged copy kept, the app stopped once and started once.
        copies = sorted(db_path(ws).parent.glob("grading.db.corrupted.*[0-9Z]"))
        assert len(copies) == 1 and integrity(copies[0]) != "ok"
        assert (runs(markers["stop"]), runs(markers["start"]), runs(markers["migrate"])) == (1, 1, 0)
        assert integrity(db_path(ws)) == "ok" and login(ws) == 200
        assert_survived(d, smtp, inc, RESTORE_STEPS)
    finally:
        d.stop()


DOWNGRADE_STEPS = [*CHECKLIST, "snapshot_database", "alembic_downgrade", "check_revision", "verify"]


def test_alembic_downgrade_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path) -> None:
    ws = workspace
    ws.start()
    d, markers = data_daemon(ws, smtp, tmp_path, DOWNGRADE_STEPS[0], "auto_destructive = true\n")
    good_rev = revision(db_path(ws))

    def bad_migration() -> None:
        add_bad_migration(ws)
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "v2: normalise the password column")
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                       env={**os.environ, **ws.env()}, check=True, capture_output=True)
        ws.restart()
        assert revision(db_path(ws)) == BAD_REVISION

    try:
        inc = crash_at_every_step(d, smtp, DOWNGRADE_STEPS, bad_migration)
        assert revision(db_path(ws)) == good_rev and login(ws) == 200
        assert runs(markers["migrate"]) == 1
        assert_survived(d, smtp, inc, DOWNGRADE_STEPS)
    finally:
        d.stop()


# -- the Fernet key: key_restore -------------------------------------------------------------

KEY_STEPS = [*CHECKLIST, "restore_key", "restart_app", "verify"]


def test_key_restore_survives_kill9_at_every_step(
        workspace: Workspace, smtp: SmtpSink, tmp_path: Path) -> None:
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
    d, _ = data_daemon(ws, smtp, tmp_path, KEY_STEPS[0], "", key)

    def replace_key() -> None:
        ws.env_file.write_text(ws.env_file.read_text().replace(good, Fernet.generate_key().decode()))
        ws.restart()

    try:
        inc = crash_at_every_step(d, smtp, KEY_STEPS, replace_key)
        assert ws.env()["DB_ENCRYPTION_KEY"] == good
        assert runs(restarts) == 1
        wait_healthy(ws)
        # The replaced key was backed up once, as evidence, before the good one went back.
        replaced = journal_rows(d, "SELECT * FROM backups WHERE kind = 'key' AND versions LIKE ?",
                                '%"incident"%')
        assert len(replaced) == 1
        assert_survived(d, smtp, inc, KEY_STEPS)
    finally:
        d.stop()

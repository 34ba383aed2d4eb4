"""A real `rollbackd run` killed -9 in the middle of a backup leaves a .partial copy; the next
start removes it (and says so) before any new backup, so nothing is left once it is over."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.control.ctl import request
from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, wait_for

pytestmark = pytest.mark.e2e

FILLER_MIB = 96
"""Big enough that copy, checksum and integrity_check take a while: the kill lands mid-backup."""


def grow(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE filler (blob BLOB)")
        conn.executemany("INSERT INTO filler VALUES (randomblob(1048576))",
                         [()] * FILLER_MIB)
        conn.commit()


def partials(state: Path) -> list[Path]:
    return sorted((state / "backups").glob("*/*/.*.partial"))


def backups(d: DaemonProcess) -> list[Any]:
    with closing(d.db()) as db:
        return db.execute("SELECT path FROM backups ORDER BY id").fetchall()


def test_kill_9_mid_backup_leaves_nothing_behind_after_the_restart(
        app: Workspace, smtp: SmtpSink, start_daemon: Any) -> None:
    db = app.root / "data" / "grading.db"
    grow(db)
    d = start_daemon(app.config_toml(smtp.port, targets_extra=f"""
[targets.grading.database]
kind = "sqlite"
path = "{db}"
"""))
    state = d.state_dir
    wait_for(lambda: backups(d), 60, "the scheduled first backup")
    wait_for(lambda: not partials(state), 30, "the scheduled backup to finish")

    # A manual backup; kill -9 the daemon while its copy is still a .partial.
    manual = threading.Thread(target=lambda: _quiet_request(str(d.socket)), daemon=True)
    manual.start()
    found = wait_for(lambda: partials(state), 30, "the manual backup's .partial")
    d.kill9()
    manual.join(30)
    (left,) = found
    assert left.exists(), "the kill came after the backup finished"
    # The copy runs in a child process of its own session: it may still be writing the
    # orphaned file; wait for it to finish so its size is settled.
    wait_for(lambda: _settled(left), 60, "the orphaned copy to finish")
    size = left.stat().st_size
    assert size > 0
    catalogued = len(backups(d))

    d.start()
    assert not left.exists()
    assert partials(state) == []
    log = d.log_text()
    assert log.count("backup=leftover") == 1
    assert f"backup=leftover path={left} size={size} status=removed" in log
    assert len(backups(d)) == catalogued  # the interrupted copy was never cataloged
    # The next backup is whole, and leaves nothing behind either.
    reply = request(str(d.socket), "backup", {"target": "grading"}, timeout=120)
    assert reply["ok"], reply
    assert partials(state) == []
    assert len(backups(d)) == catalogued + 1


def _quiet_request(socket: str) -> None:
    try:
        request(socket, "backup", {"target": "grading"}, timeout=120)
    except Exception:  # noqa: BLE001 - the daemon dies under it on purpose
        pass


def _settled(path: Path) -> bool:
    before = path.stat().st_size
    time.sleep(0.3)
    return path.stat().st_size == before

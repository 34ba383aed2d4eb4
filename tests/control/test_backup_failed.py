"""A failed scheduled backup is news: a real full tmpfs under the daemon's backup directory."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollbackd.daemon.backup.base import mib
from rollbackd.daemon.backup.files import free_bytes
from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import SmtpSink, wait_for
from tests.control.conftest import ok_json, rollbackctl

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs where the daemon keeps its backups (we run as root); unmounted after."""
    where = tmp_path / "state" / "backups"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
                   check=True, capture_output=True)
    yield where
    subprocess.run(["umount", "--lazy", str(where)], check=False, capture_output=True)


def metric(port: int, name: str) -> str:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_backup_directory_full_is_mailed_counted_and_shown(
        workspace: Workspace, smtp: SmtpSink, start_daemon, small_disk: Path,
        tmp_path: Path) -> None:
    ws = workspace
    ws.add_grades(20_000)  # the database outgrows the 64 KiB disk
    ws.start()
    port = free_port()
    config = ws.config_toml(smtp.port, state_dir=tmp_path / "state", targets_extra=f"""
[targets.grading.database]
kind = "sqlite"
path = "{ws.db_path}"

[targets.grading.backups]
interval = "1h"

[contacts.dba]
emails = ["dba@example.com"]
""").replace('metrics_address = ""', f'metrics_address = "127.0.0.1:{port}"')
    d = start_daemon(config)

    wait_for(lambda: smtp.messages, 20, f"the failure mail\n{d.log_text()}")
    kind_dir = small_disk / "grading" / "database"
    why = (f"backup directory full: needs {mib(ws.db_path.stat().st_size)}, "
           f"{mib(free_bytes(kind_dir))} free ({kind_dir})")
    ((to, mail),) = smtp.messages
    assert to == ["dba@example.com"]
    assert " ".join(str(mail["Subject"]).split()) == \
        "[rollbackd] grading: scheduled database backup FAILED"
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    assert f"no copy was taken:\n\n    {why}\n\nThere is no verified database backup at all." \
        in body.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert list(kind_dir.iterdir()) == []  # nothing half-written is left behind

    assert metric(port, "rollbackd_backups_failed_total") == \
        'rollbackd_backups_failed_total{kind="database",target="grading"} 1.0'
    (row,) = ok_json(d, "backups", "grading")
    assert (row["id"], row["kind"], row["failed"]) == (None, "database", why)
    out = rollbackctl(d, "backups", "grading").stdout
    assert out.startswith("database backup FAILED at ") and f": {why}\n(none)" in out
    (target,) = d.result("status")["targets"]
    assert target["attention"] == [f"database backup failed: {why}"]
    assert f"ok, database backup failed: {why}" in rollbackctl(d, "status").stdout

    # Room again: the next backup succeeds, and the failure is no longer news.
    subprocess.run(["umount", str(small_disk)], check=True, capture_output=True)
    assert ok_json(d, "backup", "grading")[0]["verified"] is True
    assert d.result("status")["targets"][0]["attention"] == []
    assert [r["kind"] for r in ok_json(d, "backups", "grading")] == ["database"]
    assert len(smtp.messages) == 1
    assert d.result("incidents") == []

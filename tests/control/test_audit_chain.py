"""audit --verify on a real journal: an edited, rehashed or removed row is found, by its id."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink
from tests.control.conftest import audit_rows, rollbackctl

pytestmark = pytest.mark.e2e


def test_verify_finds_an_edited_row_and_a_removed_one(workspace: Workspace, smtp: SmtpSink,
                                                      start_daemon) -> None:
    d = start_daemon(workspace.config_toml(smtp.port))
    for argv in (["status"], ["incidents"], ["pause", "--for", "5m", "--reason", "tests"],
                 ["resume"], ["show", "99"]):
        rollbackctl(d, *argv)
    ok = rollbackctl(d, "audit", "--verify")
    assert ok.returncode == 0, ok.stderr
    rows = audit_rows(d)
    pause = next(r for r in rows if r["cmd"] == "pause")
    assert d.stop() == 0

    journal = d.state_dir / "journal.sqlite3"
    with closing(sqlite3.connect(journal)) as db, db:  # someone covers their tracks
        db.execute("UPDATE audit SET args = ? WHERE id = ?", ('{"reason": "nothing"}', pause["id"]))
    d.start()
    out = rollbackctl(d, "audit", "--verify")
    assert out.returncode == 1, out.stdout
    assert f"audit_broken) audit chain broken at row {pause['id']}: its contents do not match " \
        "its hash (edited)" in out.stderr
    assert f"{pause['id'] - 1} rows before it verify" in out.stderr
    assert "Traceback" not in out.stderr

    # Restoring the row's text is not enough to hide a deletion after it.
    assert d.stop() == 0
    with closing(sqlite3.connect(journal)) as db, db:
        db.execute("UPDATE audit SET args = ? WHERE id = ?", (pause["args"], pause["id"]))
        db.execute("DELETE FROM audit WHERE id = ?", (pause["id"] + 1,))
    d.start()
    out = rollbackctl(d, "audit", "--verify")
    assert out.returncode == 1
    assert f"broken at row {pause['id'] + 2}: its link to the previous row does not match" \
        in out.stderr

    # An intruder who can write the journal edits the row again and recomputes the SHA-256 chain
    # from it on, past the deletion: the chain is keyed (HMAC-SHA256 under state_dir/audit.key,
    # which the journal does not hold), so the edited row is named.
    assert d.stop() == 0
    with closing(sqlite3.connect(journal)) as db, db:
        db.row_factory = sqlite3.Row
        db.execute("UPDATE audit SET args = ? WHERE id = ?", ('{"reason": "nothing"}', pause["id"]))
        prev = db.execute("SELECT hash FROM audit WHERE id = ?", (pause["id"] - 1,)).fetchone()[0]
        for r in db.execute("SELECT * FROM audit WHERE id >= ? ORDER BY id",
                            (pause["id"],)).fetchall():
            digest = hashlib.sha256(json.dumps([prev, r["at"], r["uid"], r["pid"], r["cmd"],
                                                r["args"], r["outcome"]]).encode()).hexdigest()
            db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                       (prev, digest, r["id"]))
            prev = digest
    d.start()
    out = rollbackctl(d, "audit", "--verify")
    assert out.returncode == 1, out.stdout
    assert f"audit_broken) audit chain broken at row {pause['id']}: its contents do not match " \
        "its hash (edited)" in out.stderr
    key = (d.state_dir / "audit.key").read_text().strip()
    assert key not in d.log_text() and key not in out.stderr

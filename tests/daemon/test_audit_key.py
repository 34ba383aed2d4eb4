"""The audit chain's key on real files: where it comes from, its mode, and the migration that
signs the rows hashed before it existed."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from rollbackd.daemon.journal import Journal, JournalError
from rollbackd.daemon.journal.audit import load_key, plain_digest
from rollbackd.daemon.journal.schema import AUDIT_KEYED, MIGRATIONS


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    j = Journal(state / "journal.sqlite3")
    key_file = state / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes().strip()
    assert len(key) == 64 and sorted(p.name for p in state.iterdir() if "audit" in p.name) == \
        ["audit.key"]
    j.audit.record(0, 1, "status", {}, "ok")
    j.close()
    j = Journal(state / "journal.sqlite3")
    assert key_file.read_bytes().strip() == key
    row = j.db.execute("SELECT * FROM audit").fetchone()
    expected = hmac.new(key, json.dumps(["", row["at"], 0, 1, "status", "{}", "ok",
                                         j.audit.key_id]).encode(), hashlib.sha256).hexdigest()
    assert row["hash"] == expected and row["key_id"] == j.audit.key_id
    assert j.audit.verify() == (1, None, "")
    assert key.decode() not in repr(j.audit)
    j.close()


def test_a_systemd_credential_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "audit-key").write_text("k" * 40 + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_key(tmp_path / "state") == b"k" * 40
    assert not (tmp_path / "state" / "audit.key").exists()
    (creds / "audit-key").unlink()  # a service without that credential: the state dir's
    assert len(load_key(tmp_path / "state")) == 64


def test_a_bad_key_file_is_refused_by_name(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_text("short\n")
    key_file.chmod(0o600)
    with pytest.raises(JournalError, match=f"{key_file}: the audit key is 5 bytes; it must be "
                                           "at least 32"):
        load_key(tmp_path)
    key_file.write_text("s" * 64)
    key_file.chmod(0o640)
    with pytest.raises(JournalError, match=f"{key_file}: the audit key must be readable by "
                                           r"rollbackd alone \(mode 640; chmod 600 it\)"):
        load_key(tmp_path)


def _old_journal(path: Path, rows: int) -> list[int]:
    """A journal as rollbackd wrote it before the key: schema AUDIT_KEYED - 1, plain hashes."""
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for sql in MIGRATIONS[:AUDIT_KEYED - 1]:
            db.executescript(sql)
        db.execute(f"PRAGMA user_version={AUDIT_KEYED - 1}")
        prev, ids = "", []
        for n in range(rows):
            at, args = f"2024-05-01T03:00:0{n}.000+00:00", json.dumps({"n": n})
            digest = plain_digest(prev, at, 0, n, "status", args, "ok")
            cur = db.execute("INSERT INTO audit (at, uid, pid, cmd, args, outcome, prev_hash,"
                             " hash) VALUES (?, 0, ?, 'status', ?, 'ok', ?, ?)",
                             (at, n, args, prev, digest))
            ids.append(int(cur.lastrowid or 0))
            prev = digest
    return ids


def test_the_migration_signs_an_unbroken_old_chain(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    _old_journal(path, 3)
    j = Journal(path)
    assert j.schema_version == len(MIGRATIONS)
    j.audit.record(0, 9, "audit", {"verify": True}, "ok")
    assert j.audit.verify() == (4, None, "")
    j.close()


def test_the_migration_does_not_launder_an_old_edit(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    ids = _old_journal(path, 3)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE audit SET outcome = 'error:forbidden' WHERE id = ?", (ids[1],))
    j = Journal(path)
    j.audit.record(0, 9, "status", {}, "ok")
    checked, broken, why = j.audit.verify()
    assert (checked, broken) == (1, ids[1])
    assert "left unsigned because the old, unkeyed chain was already broken here" in why
    keyed = [r[0] for r in j.db.execute("SELECT key_id IS NOT NULL FROM audit ORDER BY id")]
    assert keyed == [1, 0, 0, 1]
    j.close()

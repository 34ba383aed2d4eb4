"""backup_freshness on a real SQLite file shaped like the daemon's journal."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.probes.backup_freshness import BackupFreshnessProbe, BackupFreshnessSettings
from rollbackd.probes.observation import Status, Symptom

# The backups table as rollbackd/daemon/journal/schema.py creates it (copied: tests of rollbackd/probes/ stand alone).
BACKUPS = """
CREATE TABLE backups (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    size INTEGER,
    sha256 TEXT,
    verified_at TEXT,
    versions TEXT NOT NULL DEFAULT '{}'
);
"""


def iso(age: timedelta | None) -> str | None:
    if age is None:
        return None
    return (datetime.now(UTC) - age).isoformat(timespec="milliseconds")


class Journal:
    """The daemon's side: one WAL connection that keeps writing while the probe reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(BACKUPS)

    def backup(self, age: timedelta, verified: timedelta | None = timedelta(0),
               target: str = "grading", kind: str = "sqlite", created: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO backups (target, kind, path, created_at, verified_at) VALUES (?,?,?,?,?)",
            (target, kind, f"/var/lib/rollbackd/backups/{kind}", created or iso(age),
             iso(verified) if verified is not None else None))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.db.close()


def probe_for(path: Path, **kw: Any) -> BackupFreshnessProbe:
    kw.setdefault("target", "grading")
    kw.setdefault("max_age", "1d")
    return BackupFreshnessProbe("backups", BackupFreshnessSettings(journal=path, **kw))


async def test_no_backup_at_all_is_stale(journal: Journal) -> None:
    obs = await probe_for(journal.path).check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.BACKUP_STALE)
    assert obs.detail == "no verified backup of grading."
    assert obs.metrics == {"verified_backups": 0.0}


async def test_unverified_backups_do_not_count(journal: Journal) -> None:
    journal.backup(timedelta(minutes=5), verified=None)
    journal.db.execute("UPDATE backups SET verified_at = ''")
    obs = await probe_for(journal.path).check()
    assert obs.symptom is Symptom.BACKUP_STALE


async def test_old_backup_is_stale_until_a_fresh_one_is_verified(journal: Journal) -> None:
    probe = probe_for(journal.path, max_age="1d")
    journal.backup(timedelta(days=3))
    journal.backup(timedelta(days=2))
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.BACKUP_STALE)
    assert 2 * 86400 <= obs.metrics["backup_age_seconds"] < 2 * 86400 + 60
    assert obs.detail == ("the newest of 2 verified backups of grading is 2.0d old "
                          "(limit 1.0d).")
    journal.backup(timedelta(hours=1), verified=None)  # made but not yet verified
    assert (await probe.check()).symptom is Symptom.BACKUP_STALE
    journal.db.execute("UPDATE backups SET verified_at = ? WHERE verified_at IS NULL",
                       (iso(timedelta(0)),))
    obs = await probe.check()
    assert obs.status is Status.OK and obs.symptom is None
    assert 3600 <= obs.metrics["backup_age_seconds"] < 3660
    assert obs.metrics["verified_backups"] == 3
    assert "is 1.0h old (limit 1.0d)" in obs.detail


async def test_kind_and_target_filter(journal: Journal) -> None:
    journal.backup(timedelta(minutes=1), target="billing")
    journal.backup(timedelta(minutes=1), kind="fernet_key")
    journal.backup(timedelta(days=5), kind="sqlite")
    assert (await probe_for(journal.path).check()).ok
    obs = await probe_for(journal.path, backup_kind="sqlite").check()
    assert obs.symptom is Symptom.BACKUP_STALE and "verified sqlite backup of grading is 5.0d" in obs.detail
    assert (await probe_for(journal.path, backup_kind="fernet_key").check()).ok
    obs = await probe_for(journal.path, target="billing", backup_kind="sqlite").check()
    assert obs.ok and obs.detail.startswith("the only verified sqlite backup of billing is ")
    obs = await probe_for(journal.path, target="billing", backup_kind="fernet_key").check()
    assert obs.detail == "no verified fernet_key backup of billing."


async def test_timestamp_forms(journal: Journal) -> None:
    naive = (datetime.now(UTC) - timedelta(hours=2)).replace(tzinfo=None).isoformat()
    journal.backup(timedelta(0), created=naive)
    journal.backup(timedelta(0), created="yesterday-ish")
    zulu = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    journal.backup(timedelta(0), created=zulu)
    # Another offset: ISO text order is not time order, so the probe must parse.
    tokyo = (datetime.now(UTC) - timedelta(hours=30)).astimezone(
        timezone(timedelta(hours=9))).isoformat()
    journal.backup(timedelta(0), created=tokyo)
    obs = await probe_for(journal.path).check()
    assert obs.ok
    assert 3600 <= obs.metrics["backup_age_seconds"] < 3660
    assert "(1 with an unreadable created_at skipped)" in obs.detail


async def test_a_backup_from_the_future_counts_as_fresh(journal: Journal) -> None:
    journal.backup(-timedelta(minutes=10))
    obs = await probe_for(journal.path).check()
    assert obs.ok and obs.metrics["backup_age_seconds"] == 0.0


async def test_reading_never_blocks_the_daemons_writer(journal: Journal) -> None:
    journal.db.execute("PRAGMA busy_timeout = 0")
    journal.db.execute("BEGIN IMMEDIATE")
    journal.backup(timedelta(minutes=1))
    assert (await probe_for(journal.path).check()).symptom is Symptom.BACKUP_STALE  # uncommitted
    journal.db.execute("COMMIT")
    assert (await probe_for(journal.path).check()).ok
    journal.backup(timedelta(minutes=1))  # and the writer was never locked out


async def test_missing_journal_or_table_is_a_probe_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    obs = await probe_for(missing).check()
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert obs.detail == f"journal file missing: {missing}."
    assert not missing.exists()
    other = tmp_path / "other.sqlite3"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE t (x)")
    obs = await probe_for(other).check()
    assert obs.status is Status.ERROR and "no such table: backups" in obs.detail


@pytest.mark.parametrize(("kw", "words"), [
    pytest.param({"journal": "journal.sqlite3", "target": "g", "max_age": "1d"},
                 "must be an absolute path", id="relative"),
    pytest.param({"journal": "/j", "target": "g"}, "Field required", id="no-max-age"),
    pytest.param({"journal": "/j", "target": "", "max_age": "1d"}, "at least 1 character",
                 id="empty-target"),
])
def test_bad_settings(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        BackupFreshnessSettings(**kw)


async def test_without_the_daemon_or_a_journal_file_the_probe_says_so() -> None:
    probe = BackupFreshnessProbe("backups", BackupFreshnessSettings(target="g", max_age="1d"))
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert obs.detail == ("no journal to read: outside the daemon, set `journal` to the "
                          "daemon's SQLite journal file.")

"""Fixtures for the recovery tests: a journal, a backup store, a running sample app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.journal.store import Journal
from tests.recovery.support import use_wal, wait_healthy


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


@pytest.fixture
def store(journal: Journal) -> BackupStore:
    return BackupStore(journal, journal.path.parent / "backups", "grading")


@pytest.fixture
def app(workspace: Workspace) -> Workspace:
    """The sample app running on its SQLite database in WAL mode."""
    use_wal(workspace.root / "data" / "grading.db")
    workspace.start()
    wait_healthy(workspace)
    return workspace

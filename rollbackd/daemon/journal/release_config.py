"""The config each known-good release ran with: its recorded files (secret values sealed)."""

from __future__ import annotations

import json
from typing import Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, ts


class ReleaseConfigs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, target: str, version: str, files: list[dict[str, Any]]) -> None:
        """Recorded once, when the release earns known-good; a second recording replaces it."""
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO release_config (target, version, recorded_at, files)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (target, version) DO UPDATE SET"
                " recorded_at = excluded.recorded_at, files = excluded.files",
                (target, version, ts(now_utc()), json.dumps(files)))

    def files(self, target: str, version: str) -> list[dict[str, Any]] | None:
        """The release's recorded files, or None when nothing was recorded with it."""
        row = self.db.execute("SELECT files FROM release_config WHERE target = ? AND version = ?",
                              (target, version)).fetchone()
        return None if row is None else list(json.loads(row[0]))

"""What drills remember across restarts: state_dir/drills.json (per target: since when it has a
schedule, the last drill and the last that passed) beside the reports (reports/drill-ID.json)."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from rollbackd.daemon.drills.record import PASSED, DrillRun

log = logging.getLogger("rollbackd.drills")


def _dt(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


class DrillStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "drills.json"
        self.reports = state_dir / "reports"
        self._lock = threading.Lock()  # the metrics thread reads while the event loop writes
        self._state: dict[str, Any] = {"next_id": 1, "targets": {}}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("targets"), dict):
                self._state = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:  # a damaged file must not stop the daemon
            log.error("drills state=%s status=unreadable reason=%s: starting afresh", self.path,
                      exc)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._state, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _report_ids(self) -> list[int]:
        if not self.reports.is_dir():
            return []
        return sorted(int(p.stem.split("-", 1)[1]) for p in self.reports.glob("drill-*.json")
                      if p.stem.split("-", 1)[1].isdigit())

    def next_id(self) -> int:
        with self._lock:
            ids = self._report_ids()
            n = max(int(self._state.get("next_id", 1)), (ids[-1] + 1) if ids else 1)
            self._state["next_id"] = n + 1
            self._save()
        return n

    def seen(self, target: str, now: datetime) -> datetime:
        """Since when the target has a drill schedule (recorded the first time it is seen)."""
        with self._lock:
            entry = self._state["targets"].setdefault(target, {})
            if not entry.get("since"):
                entry["since"] = now.isoformat()
                self._save()
            return _dt(entry["since"]) or now

    def finished(self, run: DrillRun) -> None:
        with self._lock:
            entry = self._state["targets"].setdefault(run.target, {})
            entry.update(last_id=run.id, last_state=run.state)
            if run.state == PASSED and run.finished_at is not None:
                entry["last_success"] = run.finished_at.isoformat()
            self._save()

    def last_success(self, target: str) -> datetime | None:
        with self._lock:
            return _dt(self._state["targets"].get(target, {}).get("last_success"))

    def load(self, drill_id: int) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.reports / f"drill-{drill_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return data

    def recent(self, limit: int = 20, target: str | None = None) -> list[dict[str, Any]]:
        found = []
        for drill_id in reversed(self._report_ids()):
            data = self.load(drill_id)
            if data is not None and target in (None, data.get("target")):
                found.append(data)
            if len(found) >= limit:
                break
        return found

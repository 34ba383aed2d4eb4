"""The target's state a drill must find again: version, schema, key, row counts, probes, login."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.rollback.data_settings import SqliteDatabase
from rollbackd.probes.registry import Tells, kinds_that
from rollbackd.probes.sqlite_integrity import quote_name

if TYPE_CHECKING:
    from rollbackd.daemon.monitor import TargetMonitor

# What each probe kind tells is registered with the kind (rollbackd/probes/registry.py), as the monitor
# reads it: a new integrity or key kind counts here too.
REVISION_KINDS = kinds_that(Tells.REVISION)
KEY_KINDS = kinds_that(Tells.KEY_FINGERPRINT)


@dataclass(frozen=True)
class Snapshot:
    version: str | None
    revision: str | None
    key: str | None
    """The key's fingerprint, never the key."""
    rows: dict[str, int] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    """probe -> "ok" or its failure detail."""
    login: str = "no login probe"

    @property
    def healthy(self) -> bool:
        return bool(self.probes) and all(v == "ok" for v in self.probes.values())

    def differences(self, after: Snapshot) -> list[str]:
        """What is not as it was: each one sentence; empty when the target is as before."""
        out = []
        for what, a, b in (("version", self.version, after.version),
                           ("schema revision", self.revision, after.revision),
                           ("key", self.key, after.key)):
            if a != b:
                out.append(f"{what} {_short(a)} before, {_short(b)} after")
        for table in sorted(set(self.rows) | set(after.rows)):
            a_rows, b_rows = self.rows.get(table), after.rows.get(table)
            if a_rows != b_rows:
                out.append(f"{table}: {_n(a_rows)} rows before, {_n(b_rows)} after")
        failing = [f"{p} ({d})" for p, d in after.probes.items() if d != "ok"]
        if failing:
            out.append("failing after: " + "; ".join(failing))
        if self.login == "ok" and after.login != "ok":
            out.append(f"login worked before, not after: {after.login}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(v: str | None) -> str:
    return "none" if v is None else v[:12] if len(v) == 40 or v.startswith("sha256:") else v


def _n(v: int | None) -> str:
    return "no table" if v is None else str(v)


def count_rows(path: Path, tables: list[str]) -> dict[str, int]:
    """Row counts of `tables` (all tables when empty), read-only; a damaged table is left out."""
    counts: dict[str, int] = {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        names = tables or [str(r[0]) for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        for table in names:
            try:
                counts[table] = int(db.execute(f"SELECT count(*) FROM {quote_name(table)}")
                                    .fetchone()[0])
            except sqlite3.DatabaseError:
                continue
    return counts


async def snapshot(monitor: TargetMonitor) -> Snapshot:
    """Every probe run once (outside the monitor's debouncing), the deployed version, the
    revision and key fingerprint the probes see, and the database's row counts."""
    from rollbackd.daemon.monitor import run_probe

    version = await monitor.current_version(0.0)
    names = list(monitor.probes)
    observations = await asyncio.gather(*(run_probe(monitor.probes[p], monitor.settings[p].timeout)
                                          for p in names))
    probes = {p: "ok" if o.ok else f"{o.status}: {o.detail}" for p, o in zip(names, observations,
                                                                            strict=True)}
    revision = next((o.version for o in observations if o.kind in REVISION_KINDS and o.version),
                    None)
    key = next((o.version for o in observations if o.kind in KEY_KINDS and o.version), None)
    logins = [p for p, o in zip(names, observations, strict=True) if o.kind == "login"]
    bad = [f"{p}: {probes[p]}" for p in logins if probes[p] != "ok"]
    login = "; ".join(bad) or "ok" if logins else "no login probe"
    rows: dict[str, int] = {}
    db = monitor.config.database
    if isinstance(db, SqliteDatabase):
        try:
            rows = await asyncio.to_thread(count_rows, db.path, list(db.tables))
        except sqlite3.DatabaseError:
            rows = {}
    return Snapshot(version, revision, key, rows, probes, login)

"""`rollbackd journal migrate`: a real SQLite journal into a real PostgreSQL database."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollbackd.daemon.cli import main
from rollbackd.daemon.journal.pg import open_pg_journal
from rollbackd.daemon.journal.store import Journal
from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind
from tests.cluster.conftest import dsn_file

T0 = datetime(2024, 5, 1, 3, 0, 0, 123000, tzinfo=UTC)


def fill(path: Path) -> None:
    """A journal with rows in every table, ids with gaps (a deleted backup)."""
    j = Journal(path)
    try:
        for n in range(3):
            inc = j.incidents.open(f"t{n}", "app_down", "down", T0, {"n": n}, state="escalated")
            s = j.steps.started(inc, 1, "restart_service", idempotent=False)
            j.steps.finished(s, n != 1, 0.25 * n, f"exit {n}")
            j.mail.enqueue(f"<rollbackd.{inc}.opened@h>", inc, ["a@example.com"], "s", "b")
            j.escalations.start(inc, "escalated")
            j.mail.hold(f"<held.{inc}@h>", inc, "opened", ["a@example.com"], "s", "b")
        j.mail.sent(1)
        j.ledger.save("t0", LedgerEntry("aaa", T0, T0, T0 + timedelta(seconds=30), None, "0002"))
        j.ledger.mark_bad("t0", "bbb", "broke login")
        j.breakers.save("t0", "deployment", Breaker(BreakerMode.OPEN, (T0,), T0))
        gone = j.backups.add("t0", "database", "/b/1", 1, "x", 0.1, {}, verified=True)
        j.backups.add("t0", "database", "/b/2", 2**40, "y", 0.2, {"alembic_revision": "3"},
                      verified=True)
        j.backups.forget(gone)
        j.overrides.add(Override(OverrideKind.PAUSE, None, T0 + timedelta(days=1), "r", "ops"))
        for i in range(5):
            j.audit.record(0, 100 + i, "status", {"i": i, "password": "<redacted>"}, "ok")
    finally:
        j.close()


def rows_of(conn: Any, table: str, order: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()]


def test_every_table_is_copied_with_its_ids_and_the_chain_verifies(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "journal.sqlite3"
    fill(src)
    dsn = dsn_file(tmp_path / "dsn", pg_dsn)
    assert main(["journal", "migrate", "--from", str(src), "--to-dsn-file", str(dsn)]) == 0
    out = capsys.readouterr().out
    assert "audit chain verified (5 rows)" in out

    with closing(sqlite3.connect(src)) as lite, psycopg.connect(pg_dsn) as pg:
        tables = sorted(r[0] for r in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        assert len(tables) >= 11
        for table in tables:
            order = "id" if table not in ("ledger", "breakers", "escalations") else \
                {"ledger": "target, version", "breakers": "target, plan_kind",
                 "escalations": "incident_id"}[table]
            cols = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
            want = rows_of(lite, f"(SELECT {', '.join(cols)} FROM {table})", order)
            got = rows_of(pg, f"(SELECT {', '.join(cols)} FROM {table}) t", order)
            assert got == want, table
            assert f"{table} " in out

    # The sequences were moved past the copied ids; the daemon's journal goes on from there.
    j = open_pg_journal(pg_dsn, tmp_path)
    try:
        assert j.incidents.open("t9", "app_down", "x", None, {}) == 4
        assert j.backups.add("t0", "key", "/b/3", 1, "z", 0.1, {}, verified=True) == 3
        j.audit.record(0, 1, "status", {}, "ok")
        assert j.audit.verify() == (6, None, "")
    finally:
        j.close()


def test_a_destination_with_rows_is_refused_and_left_alone(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "journal.sqlite3"
    fill(src)
    j = open_pg_journal(pg_dsn, tmp_path)
    j.audit.record(0, 1, "status", {}, "ok")
    j.close()
    dsn = dsn_file(tmp_path / "dsn", pg_dsn)
    assert main(["journal", "migrate", "--from", str(src), "--to-dsn-file", str(dsn)]) == 1
    assert "already has rows in audit" in capsys.readouterr().err
    with psycopg.connect(pg_dsn) as pg:
        assert pg.execute("SELECT count(*) FROM incidents").fetchone() == (0,)


def test_a_missing_source_or_unreadable_dsn_says_so(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = dsn_file(tmp_path / "dsn", pg_dsn)
    assert main(["journal", "migrate", "--from", str(tmp_path / "nope.sqlite3"),
                 "--to-dsn-file", str(dsn)]) == 1
    assert "no such file" in capsys.readouterr().err
    fill(tmp_path / "j.sqlite3")
    assert main(["journal", "migrate", "--from", str(tmp_path / "j.sqlite3"),
                 "--to-dsn-file", str(tmp_path / "missing-dsn")]) == 1
    assert "cannot read secret file" in capsys.readouterr().err

"""The journal's semantics on both backends: the same scenarios on a real SQLite file and on a
real PostgreSQL database (through daemon/journal/pg.py), plus what only PostgreSQL needs."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from daemon.journal.pg import PgConnection, open_pg_journal, translate, translate_ddl
from daemon.journal.schema import MIGRATIONS
from daemon.journal.store import OPEN_STATES, Journal, JournalError
from policies.breaker import Breaker, BreakerMode
from policies.ledger import LedgerEntry
from policies.overrides import Override, OverrideKind

T0 = datetime(2024, 5, 1, 3, 0, 0, 123000, tzinfo=UTC)
Opener = Callable[[], Journal]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opener(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens the same journal again and again (a restart), on the backend of the test."""
    opened: list[Journal] = []
    if backend == "sqlite":
        def open_one() -> Journal:
            opened.append(Journal(tmp_path / "state" / "journal.sqlite3"))
            return opened[-1]
    else:
        dsn = request.getfixturevalue("pg_dsn")

        def open_one() -> Journal:
            opened.append(open_pg_journal(dsn, tmp_path / "state"))
            return opened[-1]
    yield open_one
    for j in opened:
        j.close()


@pytest.fixture
def journal(opener: Opener) -> Journal:
    return opener()


def integrity_error(backend: str) -> type[Exception]:
    return sqlite3.IntegrityError if backend == "sqlite" else psycopg.IntegrityError


def _incident(j: Journal, target: str = "web", state: str = "open") -> int:
    return j.open_incident(target, "app_down", "health failing", T0, {"health": "down"},
                           state=state)


# -- schema --------------------------------------------------------------------------------------

def test_schema_version_and_reopening_keeps_data(opener: Opener) -> None:
    j = opener()
    assert j.schema_version == len(MIGRATIONS)
    inc = _incident(j)
    j.audit(0, 1, "status", {}, "ok")
    j.close()
    j = opener()
    assert j.schema_version == len(MIGRATIONS)
    got = j.incident(inc)
    assert got is not None and (got.target, got.state, got.onset_at, got.evidence) == \
        ("web", "open", T0, {"health": "down"})
    assert [e for _, e, _ in j.timeline(inc)] == ["detected"]
    assert j.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1


def test_a_newer_schema_is_refused(opener: Opener, backend: str) -> None:
    j = opener()
    with j.tx() as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    j.close()
    with pytest.raises(JournalError, match=str(len(MIGRATIONS) + 1)):
        opener()


def test_a_failed_write_rolls_back(journal: Journal, backend: str) -> None:
    with pytest.raises(integrity_error(backend)):
        journal.add_event(12345, "nope")  # foreign key: no such incident
    assert journal.db.execute("SELECT COUNT(*) FROM timeline").fetchone()[0] == 0
    assert not journal.db.in_transaction
    _incident(journal)


def test_step_state_is_constrained(journal: Journal, backend: str) -> None:
    sid = journal.step_started(_incident(journal), 1, "x", idempotent=True)
    with pytest.raises(integrity_error(backend)):
        with journal.tx() as db:
            db.execute("UPDATE steps SET state = 'bogus' WHERE id = ?", (sid,))


# -- steps and recovery --------------------------------------------------------------------------

def test_step_lifecycle_and_no_rewrite(journal: Journal) -> None:
    inc = _incident(journal)
    ok = journal.step_started(inc, 1, "backup", idempotent=True)
    bad = journal.step_started(inc, 2, "restart", idempotent=False)
    assert ok > 0 and bad == ok + 1
    journal.step_finished(ok, True, 1.5, "backed up")
    journal.step_finished(bad, False, 0.25, "exit 1")
    steps = {s.id: s for s in journal.steps(inc)}
    assert (steps[ok].state, steps[ok].duration, steps[ok].idempotent) == ("done", 1.5, True)
    assert (steps[bad].state, steps[bad].detail, steps[bad].idempotent) == \
        ("failed", "exit 1", False)
    journal.step_finished(ok, False, 9.0, "late")
    journal.step_interrupted(bad, "late")
    assert {s.id: s for s in journal.steps(inc)} == steps


def test_recover_interrupted_all_and_per_target(opener: Opener) -> None:
    j = opener()
    web = _incident(j, "web", state="remediating")
    db = _incident(j, "db", state="remediating")
    done = j.step_started(web, 1, "backup", idempotent=True)
    j.step_finished(done, True, 0.1, "ok")
    running_web = j.step_started(web, 2, "restart_service", idempotent=False)
    running_db = j.step_started(db, 1, "restore", idempotent=False)
    j.close()  # died here

    j = opener()
    assert j.recover_interrupted("elsewhere") == []
    held = j.recover_interrupted("db")  # an instance that just came to own `db`
    assert [(i.id, s.id, i.state) for i, s in held] == [(db, running_db, "held")]
    assert j.incident(web).state == "remediating"  # type: ignore[union-attr]
    held = j.recover_interrupted()
    assert [(i.id, s.id, s.state) for i, s in held] == [(web, running_web, "interrupted")]
    assert {s.id: s.state for s in j.steps(web)} == {done: "done", running_web: "interrupted"}
    assert j.open_incident_for("web").id == web  # type: ignore[union-attr]
    assert j.recover_interrupted() == []


# -- incidents -----------------------------------------------------------------------------------

@pytest.mark.parametrize("state", sorted(OPEN_STATES))
def test_open_incident_for_finds_open_states(journal: Journal, state: str) -> None:
    inc = _incident(journal, state=state)
    assert journal.open_incident_for("web").id == inc  # type: ignore[union-attr]
    assert journal.open_incident_for("other") is None


def test_newest_open_incident_and_listing(journal: Journal) -> None:
    old = _incident(journal, state="escalated")
    journal.update_incident(old, "resolved", state="resolved")
    assert journal.open_incident_for("web") is None
    new = _incident(journal)
    assert journal.open_incident_for("web").id == new  # type: ignore[union-attr]
    assert [i.id for i in journal.incidents(10)] == [new, old]
    with pytest.raises(JournalError):
        journal.update_incident(new, target="other")


# -- ledger, breakers, overrides, backups ------------------------------------------------------

def test_ledger_round_trip_mark_bad_and_unmark(opener: Opener) -> None:
    j = opener()
    v1 = LedgerEntry("aaa111", T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=31))
    v2 = LedgerEntry("bbb222", T0 + timedelta(minutes=5), T0 + timedelta(minutes=5))
    j.save_ledger("web", v1)
    j.save_ledger("web", v2)
    v2b = LedgerEntry("bbb222", T0 + timedelta(hours=1), T0 + timedelta(minutes=5),
                      T0 + timedelta(minutes=6))
    j.save_ledger("web", v2b)  # an update keeps first_seen
    j.mark_bad("web", "aaa111", "crash-looped")
    j.close()
    j = opener()
    entries = {e.version: e for e in j.ledger("web")}
    assert [e.version for e in j.ledger("web")] == ["aaa111", "bbb222"]
    assert entries["bbb222"] == LedgerEntry("bbb222", v2.first_seen, v2b.healthy_since,
                                            v2b.known_good_at)
    assert entries["aaa111"].bad_at is not None and entries["aaa111"].bad_reason == "crash-looped"
    assert j.unmark_bad("web", "aaa111") and not j.unmark_bad("web", "zzz")


def test_breaker_round_trip(opener: Opener) -> None:
    j = opener()
    assert j.breaker("web", "deployment") == Breaker()
    opened = Breaker(BreakerMode.OPEN, (T0, T0 + timedelta(minutes=1)), T0 + timedelta(minutes=1))
    j.save_breaker("web", "deployment", opened)
    j.save_breaker("web", "database", Breaker(BreakerMode.HALF_OPEN, (T0,), T0))
    j.close()
    j = opener()
    assert j.breaker("web", "deployment") == opened
    assert sorted((t, k, b.mode) for t, k, b in j.breakers()) == [
        ("web", "database", BreakerMode.HALF_OPEN), ("web", "deployment", BreakerMode.OPEN)]


def test_overrides_end_by_kind_and_target_including_the_global_ones(journal: Journal) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    journal.add_override(Override(OverrideKind.PAUSE, None, until, "all", "ops"))
    journal.add_override(Override(OverrideKind.PAUSE, "web", until, "web", "ops"))
    journal.add_override(Override(OverrideKind.SILENCE, "web", until, "quiet", "ops"))
    assert len(journal.overrides()) == 3
    assert journal.end_overrides("pause", None) == 1  # `target IS ?` with NULL
    assert journal.end_overrides(None, "web") == 2
    assert journal.overrides() == ()


def test_backup_catalog(journal: Journal) -> None:
    first = journal.catalog_backup("web", "database", "/b/1", 10, "ab", 0.5,
                                   {"alembic_revision": "0002"}, verified=True)
    second = journal.catalog_backup("web", "database", "/b/2", 2**40, "cd", 0.5, {},
                                    verified=False, verify_error="truncated")
    assert second == first + 1
    rows = journal.backup_rows("web", "database")
    assert [(r["id"], r["size"], r["verify_error"]) for r in rows] == \
        [(first, 10, None), (second, 2**40, "truncated")]
    assert [b.alembic_revision for b in journal.backup_entries("web", "database")] == \
        ["0002", None]
    journal.forget_backup(first)
    assert [r["id"] for r in journal.backup_rows("web")] == [second]


# -- outbox, escalation and audit ---------------------------------------------------------------

def test_outbox_idempotent_due_failed_partly_and_counts(journal: Journal) -> None:
    inc = _incident(journal)
    journal.enqueue_mail("<m1@host>", inc, ["a@example.com"], "first", "body 1")
    journal.enqueue_mail("<m1@host>", inc, ["b@example.com"], "second", "body 2")
    journal.enqueue_mail("<m2@host>", None, ["a@example.com", "b@example.com"], "other", "x")
    rows = journal.db.execute("SELECT message_id, subject, recipients FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("<m1@host>", "first", '["a@example.com"]'),
                                        ("<m2@host>", "other", '["a@example.com", "b@example.com"]')]
    assert journal.outbox_counts() == {"sent": 0, "queued": 2}
    now = datetime.now(UTC)
    due = journal.due_mail(now + timedelta(seconds=1))
    assert [r["message_id"] for r in due] == ["<m1@host>", "<m2@host>"]
    assert dict(due[0])["subject"] == "first" and due[0][1] == "<m1@host>"
    journal.mail_sent(due[0]["id"])
    journal.mail_failed(due[1]["id"], "refused", now + timedelta(seconds=60))
    assert journal.due_mail(now + timedelta(seconds=59)) == []
    journal.mail_partly_sent(due[1]["id"], ["b@example.com"], "refused: b",
                             now + timedelta(seconds=30))
    (again,) = journal.due_mail_in_order(now + timedelta(seconds=31))
    assert (again["attempts"], again["recipients"]) == (2, '["b@example.com"]')
    assert journal.outbox_counts() == {"sent": 1, "queued": 1}
    assert journal.thread_root(inc) == "<m1@host>" and journal.incident_mailed(inc) is True


def test_mail_context_storm_rank_and_ladders(journal: Journal) -> None:
    inc = _incident(journal, state="escalated")
    ctx = journal.mail_context(inc)
    assert ctx is not None and (ctx["rollback_failed"], ctx["breaker_open"]) == (0, 0)
    journal.add_event(inc, "failed", "restart exited 1")
    journal.save_breaker("web", "deployment", Breaker(BreakerMode.OPEN, (T0,), T0))
    ctx = journal.mail_context(inc)
    assert ctx is not None and (ctx["rollback_failed"], ctx["breaker_open"]) == (1, 1)
    second = _incident(journal, "db")
    assert (journal.storm_rank(inc, 300), journal.storm_rank(second, 300)) == (1, 2)
    journal.start_ladder(inc, "escalated")
    journal.start_ladder(inc, "escalated")  # the same state does not restart the clock
    (ladder,) = journal.ladders_waiting(frozenset({"escalated"}))
    journal.ladder_step(inc, 2, T0, ["cto@example.com"])
    assert journal.escalation(inc) == (2, ["cto@example.com"])
    assert ladder["target"] == "web"
    changes = journal.timeline_changes(0)
    assert [c[0] for c in changes] == [inc, second]


def test_audit_chain_verifies_and_finds_an_edit(journal: Journal) -> None:
    journal.audit(0, 10, "status", {}, "ok")
    journal.audit(1000, 11, "ack", {"id": 3}, "error:not_found")
    journal.audit(None, None, "help", {"percent": "100%?"}, "ok")
    assert journal.verify_audit() == (3, None, "")
    rows = journal.audit_rows(10)
    assert [r["cmd"] for r in rows] == ["help", "ack", "status"]
    assert rows[0]["args"] == '{"percent": "100%?"}'
    with journal.tx() as db:
        db.execute("UPDATE audit SET outcome = 'ok' WHERE cmd = 'ack'")
    checked, broken, why = journal.verify_audit()
    assert (checked, broken) == (1, rows[1]["id"]) and "edited" in why


# -- what only PostgreSQL needs ------------------------------------------------------------------

def test_concurrent_writers_take_turns_and_keep_the_audit_chain(pg_dsn: str,
                                                                tmp_path: Path) -> None:
    """Two instances' journals writing at once: BEGIN IMMEDIATE's turn-taking holds, so no two
    audit rows link to the same predecessor."""
    journals = [open_pg_journal(pg_dsn, tmp_path) for _ in range(3)]
    try:
        def write(j: Journal, n: int) -> None:
            for i in range(40):
                j.audit(0, n, "status", {"i": i}, "ok")

        threads = [threading.Thread(target=write, args=(j, n)) for n, j in enumerate(journals)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert journals[0].verify_audit() == (120, None, "")
    finally:
        for j in journals:
            j.close()


def test_a_lost_connection_is_replaced_before_the_next_statement(pg_dsn: str,
                                                                 tmp_path: Path) -> None:
    j = open_pg_journal(pg_dsn, tmp_path)
    try:
        inc = _incident(j)
        db = j.db
        assert isinstance(db, PgConnection)
        pid = db.conn.info.backend_pid
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert j.incident(inc) is not None  # a read: retried on a new connection
        j.add_event(inc, "joined", "after the reconnect")
        kill(pg_dsn, j)
        j.add_event(inc, "joined", "a write first: BEGIN is retried on a new connection")
        with pytest.raises(psycopg.OperationalError), j.tx() as tx:
            tx.execute("INSERT INTO timeline (incident_id, at, event) VALUES (?, 'x', 'lost')",
                       (inc,))
            kill(pg_dsn, j)  # lost mid-transaction: the write fails, it is not redone
            tx.execute("INSERT INTO timeline (incident_id, at, event) VALUES (?, 'y', 'lost')",
                       (inc,))
        assert [e for _, e, _ in j.timeline(inc)] == ["detected", "joined", "joined"]
    finally:
        j.close()


def kill(dsn: str, j: Journal) -> None:
    db = j.db
    assert isinstance(db, PgConnection)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (db.conn.info.backend_pid,))


def test_translation() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b LIKE 'x?%'") == \
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%'"
    assert translate("INSERT OR IGNORE INTO outbox (a) VALUES (?)", frozenset({"outbox"})) == \
        "INSERT INTO outbox (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id"
    assert translate("UPDATE o SET x = 1 WHERE target IS ?") == \
        "UPDATE o SET x = 1 WHERE target IS NOT DISTINCT FROM %s"
    assert translate("SELECT SUM(sent_at IS NOT NULL), SUM(a - (b IS NULL AND c IS NOT NULL))"
                     " FROM o") == ("SELECT SUM(CAST((sent_at IS NOT NULL) AS INTEGER)),"
                                    " SUM(a - (CAST((b IS NULL AND c IS NOT NULL) AS INTEGER)))"
                                    " FROM o")
    ddl = translate_ddl("CREATE TABLE x (id INTEGER PRIMARY KEY, incident_id INTEGER PRIMARY KEY,"
                        " d REAL, t TEXT NOT NULL DEFAULT 'TEXT')")
    assert ddl == ('CREATE TABLE x (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,'
                   ' incident_id BIGINT PRIMARY KEY, d DOUBLE PRECISION,'
                   ' t TEXT COLLATE "C" NOT NULL DEFAULT \'TEXT\')')


def test_metrics_read_the_postgresql_journal(pg_dsn: str, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from daemon.journal.backend import PgJournalCollector

    j = open_pg_journal(pg_dsn, tmp_path)
    try:
        inc = _incident(j, state="escalated")
        j.enqueue_mail("<m@h>", inc, ["a@example.com"], "s", "b")
        registry = CollectorRegistry()
        registry.register(PgJournalCollector(pg_dsn, lambda: {}))
        assert registry.get_sample_value("rollbackd_journal_readable") == 1
        assert registry.get_sample_value("rollbackd_incidents_open", {
            "target": "web", "incident_class": "app_down", "state": "escalated"}) == 1
        assert registry.get_sample_value("rollbackd_escalation_mails", {"state": "queued"}) == 1
    finally:
        j.close()

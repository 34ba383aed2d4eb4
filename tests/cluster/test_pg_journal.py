"""The journal's semantics on both backends: the same scenarios on a real SQLite file and on a
real PostgreSQL database (through rollbackd/daemon/journal/pg.py), plus what only PostgreSQL needs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from rollbackd.daemon.journal import Journal, JournalError
from rollbackd.daemon.journal.audit import plain_digest
from rollbackd.daemon.journal.freshness import JournalBackups
from rollbackd.daemon.journal.pg import PgConnection, open_pg_journal, translate, translate_ddl
from rollbackd.daemon.journal.schema import MIGRATIONS
from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.lifecycle import OPEN_STATES
from rollbackd.policies.overrides import Override, OverrideKind
from rollbackd.probes.backup_freshness import BackupFreshnessProbe, BackupFreshnessSettings
from rollbackd.probes.observation import Status, Symptom
from rollbackd.probes.registry import build_probe

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
    return j.incidents.open(target, "app_down", "health failing", T0, {"health": "down"},
                            state=state)


# -- schema --------------------------------------------------------------------------------------

def test_schema_version_and_reopening_keeps_data(opener: Opener) -> None:
    j = opener()
    assert j.schema_version == len(MIGRATIONS)
    inc = _incident(j)
    j.audit.record(0, 1, "status", {}, "ok")
    j.close()
    j = opener()
    assert j.schema_version == len(MIGRATIONS)
    got = j.incidents.get(inc)
    assert got is not None and (got.target, got.state, got.onset_at, got.evidence) == \
        ("web", "open", T0, {"health": "down"})
    assert [e for _, e, _ in j.incidents.timeline(inc)] == ["detected"]
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
        journal.incidents.add_event(12345, "nope")  # foreign key: no such incident
    assert journal.db.execute("SELECT COUNT(*) FROM timeline").fetchone()[0] == 0
    assert not journal.db.in_transaction
    _incident(journal)


def test_step_state_is_constrained(journal: Journal, backend: str) -> None:
    sid = journal.steps.started(_incident(journal), 1, "x", idempotent=True)
    with pytest.raises(integrity_error(backend)):
        with journal.tx() as db:
            db.execute("UPDATE steps SET state = 'bogus' WHERE id = ?", (sid,))


def test_a_nested_tx_commits_with_the_outer_one_or_not_at_all(journal: Journal) -> None:
    """An incident's end and its mail are written by two repositories, each in its own tx():
    inside an outer one they commit together, and an error before that commit leaves neither."""
    inc = _incident(journal)

    class Crash(Exception):
        pass

    with pytest.raises(Crash), journal.tx():
        journal.incidents.update(inc, "verified", state="held")
        journal.mail.enqueue("<m1>", inc, ["a@example.com"], "held", "body")
        assert journal.db.in_transaction  # the inner blocks did not commit
        raise Crash
    assert not journal.db.in_transaction
    assert journal.incidents.get(inc).state == "open"  # type: ignore[union-attr]
    assert journal.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0

    with journal.tx():
        journal.incidents.update(inc, "verified", state="held")
        journal.mail.enqueue("<m1>", inc, ["a@example.com"], "held", "body")
    assert journal.incidents.get(inc).state == "held"  # type: ignore[union-attr]
    assert journal.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def test_an_inner_tx_that_fails_undoes_only_its_own_writes(journal: Journal,
                                                           backend: str) -> None:
    inc = _incident(journal)
    with journal.tx():
        journal.incidents.add_event(inc, "kept")
        with pytest.raises(integrity_error(backend)):
            journal.incidents.add_event(12345, "nope")  # foreign key: no such incident
        journal.incidents.add_event(inc, "kept too")  # the transaction still takes writes
    assert [e for _, e, _ in journal.incidents.timeline(inc)] == ["detected", "kept", "kept too"]
    assert not journal.db.in_transaction


async def test_a_tx_is_never_joined_from_another_task(journal: Journal) -> None:
    """Only the task that opened a transaction joins it: another, running while the first
    awaits inside it, gets the backend's error instead of writing into the first's commit."""
    inc = _incident(journal)
    opened, go_on = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        with journal.tx():
            journal.incidents.add_event(inc, "first")
            opened.set()
            await go_on.wait()

    task = asyncio.create_task(first())
    await opened.wait()
    with pytest.raises(Exception, match="within a transaction"):
        with journal.tx():
            journal.incidents.add_event(inc, "second")
    go_on.set()
    await task
    assert [e for _, e, _ in journal.incidents.timeline(inc)] == ["detected", "first"]
    assert not journal.db.in_transaction


# -- steps and recovery --------------------------------------------------------------------------

def test_step_lifecycle_and_no_rewrite(journal: Journal) -> None:
    inc = _incident(journal)
    ok = journal.steps.started(inc, 1, "backup", idempotent=True)
    bad = journal.steps.started(inc, 2, "restart", idempotent=False)
    assert ok > 0 and bad == ok + 1
    journal.steps.finished(ok, True, 1.5, "backed up")
    journal.steps.finished(bad, False, 0.25, "exit 1")
    steps = {s.id: s for s in journal.steps.of(inc)}
    assert (steps[ok].state, steps[ok].duration, steps[ok].idempotent) == ("done", 1.5, True)
    assert (steps[bad].state, steps[bad].detail, steps[bad].idempotent) == \
        ("failed", "exit 1", False)
    journal.steps.finished(ok, False, 9.0, "late")
    journal.steps.interrupted(bad, "late")
    assert {s.id: s for s in journal.steps.of(inc)} == steps


def test_recover_interrupted_all_and_per_target(opener: Opener) -> None:
    j = opener()
    web = _incident(j, "web", state="remediating")
    db = _incident(j, "db", state="remediating")
    done = j.steps.started(web, 1, "backup", idempotent=True)
    j.steps.finished(done, True, 0.1, "ok")
    running_web = j.steps.started(web, 2, "restart_service", idempotent=False)
    running_db = j.steps.started(db, 1, "restore", idempotent=False)
    j.close()  # died here

    j = opener()
    assert j.steps.recover_interrupted("elsewhere") == []
    held = j.steps.recover_interrupted("db")  # an instance that just came to own `db`
    assert [(i.id, s.id, i.state) for i, s in held] == [(db, running_db, "held")]
    assert j.incidents.get(web).state == "remediating"  # type: ignore[union-attr]
    held = j.steps.recover_interrupted()
    assert [(i.id, s.id, s.state) for i, s in held] == [(web, running_web, "interrupted")]
    assert {s.id: s.state for s in j.steps.of(web)} == {done: "done", running_web: "interrupted"}
    assert j.incidents.open_for("web").id == web  # type: ignore[union-attr]
    assert j.steps.recover_interrupted() == []


# -- incidents -----------------------------------------------------------------------------------

@pytest.mark.parametrize("state", sorted(OPEN_STATES))
def test_open_incident_for_finds_open_states(journal: Journal, state: str) -> None:
    inc = _incident(journal, state=state)
    assert journal.incidents.open_for("web").id == inc  # type: ignore[union-attr]
    assert journal.incidents.open_for("other") is None


def test_newest_open_incident_and_listing(journal: Journal) -> None:
    old = _incident(journal, state="escalated")
    journal.incidents.update(old, "resolved", state="resolved")
    assert journal.incidents.open_for("web") is None
    new = _incident(journal)
    assert journal.incidents.open_for("web").id == new  # type: ignore[union-attr]
    assert [i.id for i in journal.incidents.recent(10)] == [new, old]
    with pytest.raises(JournalError):
        journal.incidents.update(new, target="other")


# -- ledger, breakers, overrides, backups ------------------------------------------------------

def test_ledger_round_trip_mark_bad_and_unmark(opener: Opener) -> None:
    j = opener()
    v1 = LedgerEntry("aaa111", T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=31))
    v2 = LedgerEntry("bbb222", T0 + timedelta(minutes=5), T0 + timedelta(minutes=5))
    j.ledger.save("web", v1)
    j.ledger.save("web", v2)
    v2b = LedgerEntry("bbb222", T0 + timedelta(hours=1), T0 + timedelta(minutes=5),
                      T0 + timedelta(minutes=6))
    j.ledger.save("web", v2b)  # an update keeps first_seen
    j.ledger.mark_bad("web", "aaa111", "crash-looped")
    j.close()
    j = opener()
    entries = {e.version: e for e in j.ledger.entries("web")}
    assert [e.version for e in j.ledger.entries("web")] == ["aaa111", "bbb222"]
    assert entries["bbb222"] == LedgerEntry("bbb222", v2.first_seen, v2b.healthy_since,
                                            v2b.known_good_at)
    assert entries["aaa111"].bad_at is not None and entries["aaa111"].bad_reason == "crash-looped"
    assert j.ledger.unmark_bad("web", "aaa111") and not j.ledger.unmark_bad("web", "zzz")


def test_breaker_round_trip(opener: Opener) -> None:
    j = opener()
    assert j.breakers.get("web", "deployment") == Breaker()
    opened = Breaker(BreakerMode.OPEN, (T0, T0 + timedelta(minutes=1)), T0 + timedelta(minutes=1))
    j.breakers.save("web", "deployment", opened)
    j.breakers.save("web", "database", Breaker(BreakerMode.HALF_OPEN, (T0,), T0))
    j.close()
    j = opener()
    assert j.breakers.get("web", "deployment") == opened
    assert sorted((t, k, b.mode) for t, k, b in j.breakers.all()) == [
        ("web", "database", BreakerMode.HALF_OPEN), ("web", "deployment", BreakerMode.OPEN)]


def test_overrides_end_by_kind_and_target_including_the_global_ones(journal: Journal) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    journal.overrides.add(Override(OverrideKind.PAUSE, None, until, "all", "ops"))
    journal.overrides.add(Override(OverrideKind.PAUSE, "web", until, "web", "ops"))
    journal.overrides.add(Override(OverrideKind.SILENCE, "web", until, "quiet", "ops"))
    assert len(journal.overrides.active()) == 3
    assert journal.overrides.end("pause", None) == 1  # `target IS ?` with NULL
    assert journal.overrides.end(None, "web") == 2
    assert journal.overrides.active() == ()


def test_backup_catalog(journal: Journal) -> None:
    first = journal.backups.add("web", "database", "/b/1", 10, "ab", 0.5,
                                {"alembic_revision": "0002"}, verified=True)
    second = journal.backups.add("web", "database", "/b/2", 2**40, "cd", 0.5, {},
                                 verified=False, verify_error="truncated")
    assert second == first + 1
    rows = journal.backups.of("web", "database")
    assert [(b.id, b.size, b.verify_error) for b in rows] == \
        [(first, 10, None), (second, 2**40, "truncated")]
    assert [b.alembic_revision for b in journal.backups.entries("web", "database")] == \
        ["0002", None]
    journal.backups.forget(first)
    assert [b.id for b in journal.backups.of("web")] == [second]


# -- outbox, escalation and audit ---------------------------------------------------------------

def test_outbox_idempotent_due_failed_partly_and_counts(journal: Journal) -> None:
    inc = _incident(journal)
    journal.mail.enqueue("<m1@host>", inc, ["a@example.com"], "first", "body 1")
    journal.mail.enqueue("<m1@host>", inc, ["b@example.com"], "second", "body 2")
    journal.mail.enqueue("<m2@host>", None, ["a@example.com", "b@example.com"], "other", "x")
    rows = journal.db.execute("SELECT message_id, subject, recipients FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("<m1@host>", "first", '["a@example.com"]'),
                                        ("<m2@host>", "other", '["a@example.com", "b@example.com"]')]
    assert journal.mail.counts() == {"sent": 0, "queued": 2}
    now = datetime.now(UTC)
    due = journal.mail.due(now + timedelta(seconds=1))
    assert [m.message_id for m in due] == ["<m1@host>", "<m2@host>"]
    assert (due[0].subject, due[0].recipients) == ("first", ("a@example.com",))
    journal.mail.sent(due[0].id)
    journal.mail.failed(due[1].id, "refused", now + timedelta(seconds=60))
    assert journal.mail.due(now + timedelta(seconds=59)) == []
    journal.mail.partly_sent(due[1].id, ["b@example.com"], "refused: b",
                             now + timedelta(seconds=30))
    (again,) = journal.mail.due(now + timedelta(seconds=31))
    assert (again.attempts, again.recipients) == (2, ("b@example.com",))
    assert journal.mail.counts() == {"sent": 1, "queued": 1}
    assert journal.mail.thread_root(inc) == "<m1@host>" and journal.mail.incident_mailed(inc) is True


def test_mail_context_storm_rank_and_ladders(journal: Journal) -> None:
    inc = _incident(journal, state="escalated")
    ctx = journal.incidents.mail_context(inc)
    assert ctx is not None and (ctx.rollback_failed, ctx.breaker_open) == (False, False)
    journal.incidents.add_event(inc, "failed", "restart exited 1")
    journal.breakers.save("web", "deployment", Breaker(BreakerMode.OPEN, (T0,), T0))
    ctx = journal.incidents.mail_context(inc)
    assert ctx is not None and (ctx.rollback_failed, ctx.breaker_open) == (True, True)
    second = _incident(journal, "db")
    assert (journal.incidents.storm_rank(inc, 300), journal.incidents.storm_rank(second, 300)) == (1, 2)
    journal.escalations.start(inc, "escalated")
    journal.escalations.start(inc, "escalated")  # the same state does not restart the clock
    (ladder,) = journal.escalations.waiting(frozenset({"escalated"}))
    journal.escalations.step(inc, 2, T0, ["cto@example.com"])
    assert journal.escalations.of(inc) == (2, ["cto@example.com"])
    assert (ladder.target, ladder.tier) == ("web", 1)
    changes = journal.incidents.timeline_changes(0)
    assert [c[0] for c in changes] == [inc, second]


def test_audit_chain_verifies_and_finds_an_edit(journal: Journal) -> None:
    journal.audit.record(0, 10, "status", {}, "ok")
    journal.audit.record(1000, 11, "ack", {"id": 3}, "error:not_found")
    journal.audit.record(None, None, "help", {"percent": "100%?"}, "ok")
    assert journal.audit.verify() == (3, None, "")
    rows = journal.audit.recent(10)
    assert [r.cmd for r in rows] == ["help", "ack", "status"]
    assert rows[0].args == {"percent": "100%?"}
    with journal.tx() as db:
        db.execute("UPDATE audit SET outcome = 'ok' WHERE cmd = 'ack'")
    checked, broken, why = journal.audit.verify()
    assert (checked, broken) == (1, rows[1].id) and "edited" in why


def _rehash_plainly(journal: Journal, from_id: int) -> None:
    """What an intruder who can write the journal does after editing row `from_id`: recompute
    the (old, unkeyed) SHA-256 chain from that row on, links and all."""
    rows = journal.db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    prev = ""
    with journal.tx() as db:
        for r in rows:
            if r["id"] >= from_id:
                digest = plain_digest(prev, r["at"], r["uid"], r["pid"], r["cmd"], r["args"],
                                      r["outcome"])
                db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                           (prev, digest, r["id"]))
                prev = digest
            else:
                prev = r["hash"]


def test_an_edited_row_with_its_chain_recomputed_is_named(journal: Journal) -> None:
    for n in range(4):
        journal.audit.record(0, n, "pause", {"reason": f"r{n}"}, "ok")
    edited = journal.audit.recent(4)[-2].id  # the second row
    with journal.tx() as db:
        db.execute("UPDATE audit SET args = ? WHERE id = ?", ('{"reason": "nothing"}', edited))
    _rehash_plainly(journal, edited)
    assert journal.audit.verify() == (1, edited, "its contents do not match its hash (edited)")
    with journal.tx() as db:  # nor does claiming the rows predate the key
        db.execute("UPDATE audit SET key_id = NULL WHERE id >= ?", (edited,))
    checked, broken, why = journal.audit.verify()
    assert (checked, broken) == (1, edited) and why.startswith("it is not signed with the audit")


def test_rows_signed_with_another_key_are_named(opener: Opener, tmp_path: Path) -> None:
    j = opener()
    j.audit.record(0, 1, "status", {}, "ok")
    (tmp_path / "state" / "audit.key").unlink()  # the next opener makes another key
    other = opener()
    other.audit.record(0, 2, "status", {}, "ok")
    checked, broken, why = other.audit.verify()
    assert (checked, broken) == (0, 1) and "signed with another audit key" in why
    assert j.audit.key_id in why and other.audit.key_id in why


def test_the_backup_freshness_probe_reads_the_journal(journal: Journal) -> None:
    settings = BackupFreshnessSettings(target="web", backup_kind="database", max_age="1h")
    probe = build_probe("backups", settings, JournalBackups(journal.backups))
    assert isinstance(probe, BackupFreshnessProbe)
    obs = asyncio.run(probe.check())
    assert (obs.status, obs.detail) == (Status.FAIL, "no verified database backup of web.")
    journal.backups.add("web", "database", "/b/1", 10, "ab", 0.5, {}, verified=False,
                        verify_error="truncated")
    journal.backups.add("web", "key", "/b/2", 10, "ab", 0.5, {}, verified=True)
    assert asyncio.run(probe.check()).symptom is Symptom.BACKUP_STALE
    journal.backups.add("web", "database", "/b/3", 10, "ab", 0.5, {}, verified=True)
    obs = asyncio.run(probe.check())
    assert obs.status is Status.OK and obs.metrics["verified_backups"] == 1
    assert obs.detail.startswith("the only verified database backup of web is ")


# -- what only PostgreSQL needs ------------------------------------------------------------------

def test_concurrent_writers_take_turns_and_keep_the_audit_chain(pg_dsn: str,
                                                                tmp_path: Path) -> None:
    """Two instances' journals writing at once: BEGIN IMMEDIATE's turn-taking holds, so no two
    audit rows link to the same predecessor."""
    journals = [open_pg_journal(pg_dsn, tmp_path) for _ in range(3)]
    try:
        def write(j: Journal, n: int) -> None:
            for i in range(40):
                j.audit.record(0, n, "status", {"i": i}, "ok")

        threads = [threading.Thread(target=write, args=(j, n)) for n, j in enumerate(journals)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert journals[0].audit.verify() == (120, None, "")
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
        assert j.incidents.get(inc) is not None  # a read: retried on a new connection
        j.incidents.add_event(inc, "joined", "after the reconnect")
        kill(pg_dsn, j)
        j.incidents.add_event(inc, "joined", "a write first: BEGIN is retried on a new connection")
        with pytest.raises(psycopg.OperationalError), j.tx() as tx:
            tx.execute("INSERT INTO timeline (incident_id, at, event) VALUES (?, 'x', 'lost')",
                       (inc,))
            kill(pg_dsn, j)  # lost mid-transaction: the write fails, it is not redone
            tx.execute("INSERT INTO timeline (incident_id, at, event) VALUES (?, 'y', 'lost')",
                       (inc,))
        assert [e for _, e, _ in j.incidents.timeline(inc)] == ["detected", "joined", "joined"]
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

    from rollbackd.daemon.journal.backend import PgJournalCollector

    j = open_pg_journal(pg_dsn, tmp_path)
    try:
        inc = _incident(j, state="escalated")
        j.mail.enqueue("<m@h>", inc, ["a@example.com"], "s", "b")
        registry = CollectorRegistry()
        registry.register(PgJournalCollector(pg_dsn, lambda: {}))
        assert registry.get_sample_value("rollbackd_journal_readable") == 1
        assert registry.get_sample_value("rollbackd_incidents_open", {
            "target": "web", "incident_class": "app_down", "state": "escalated"}) == 1
        assert registry.get_sample_value("rollbackd_escalation_mails", {"state": "queued"}) == 1
    finally:
        j.close()

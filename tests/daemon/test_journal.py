"""The journal on real SQLite files: schema, durability settings, steps, recovery, ledger,
breakers and outbox."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.daemon.journal import Journal, JournalError
from rollbackd.daemon.journal.schema import MIGRATIONS
from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.lifecycle import OPEN_STATES

T0 = datetime(2024, 5, 1, 3, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j = Journal(path)
    yield j
    j.close()


def _incident(j: Journal, target: str = "web", state: str = "open") -> int:
    return j.incidents.open(target, "app_down", "health failing", T0, {"health": "down"},
                            state=state)


# -- schema and file -----------------------------------------------------------------------------

def test_fresh_journal_schema_wal_and_mode(journal: Journal, path: Path) -> None:
    assert journal.schema_version == len(MIGRATIONS)
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tables = {r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"incidents", "timeline", "steps", "ledger", "backups", "breakers", "outbox",
            "audit"} <= tables
    # WAL persists in the file itself: another connection sees it too.
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "journal.sqlite3"
    j = Journal(path)
    j.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_reopening_keeps_data_and_does_not_migrate_again(path: Path) -> None:
    j = Journal(path)
    inc = _incident(j)
    j.audit.record(0, 1, "status", {}, "ok")
    j.close()

    j = Journal(path)
    try:
        assert j.schema_version == len(MIGRATIONS)
        got = j.incidents.get(inc)
        assert got is not None
        assert (got.target, got.incident_class, got.state, got.reason) == \
            ("web", "app_down", "open", "health failing")
        assert got.onset_at == T0
        assert got.evidence == {"health": "down"}
        assert [e for _, e, _ in j.incidents.timeline(inc)] == ["detected"]
        assert j.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1
    finally:
        j.close()


def test_a_newer_schema_is_refused_naming_the_path(path: Path) -> None:
    Journal(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.commit()
    with pytest.raises(JournalError) as err:
        Journal(path)
    assert str(path) in str(err.value)
    assert str(len(MIGRATIONS) + 1) in str(err.value)
    # The file is left as it was: nothing downgraded, nothing dropped.
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1


def test_a_failed_write_rolls_back(journal: Journal) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        journal.incidents.add_event(12345, "nope")  # foreign key: no such incident
    assert journal.db.execute("SELECT COUNT(*) FROM timeline").fetchone()[0] == 0
    assert not journal.db.in_transaction
    _incident(journal)  # and the connection still writes


def test_update_incident_refuses_unknown_fields(journal: Journal) -> None:
    inc = _incident(journal)
    with pytest.raises(JournalError, match="id"):
        journal.incidents.update(inc, id=99)
    with pytest.raises(JournalError, match="target"):
        journal.incidents.update(inc, target="other")
    assert journal.incidents.get(inc).target == "web"  # type: ignore[union-attr]


# -- steps ---------------------------------------------------------------------------------------

def test_step_lifecycle(journal: Journal) -> None:
    inc = _incident(journal)
    ok = journal.steps.started(inc, 1, "backup", idempotent=True)
    bad = journal.steps.started(inc, 2, "restart", idempotent=False)
    assert [(s.name, s.state) for s in journal.steps.of(inc)] == \
        [("backup", "running"), ("restart", "running")]

    journal.steps.finished(ok, True, 1.5, "backed up")
    journal.steps.finished(bad, False, 0.25, "exit 1")
    steps = {s.id: s for s in journal.steps.of(inc)}
    assert (steps[ok].state, steps[ok].duration, steps[ok].detail, steps[ok].idempotent) == \
        ("done", 1.5, "backed up", True)
    assert (steps[bad].state, steps[bad].duration, steps[bad].detail, steps[bad].idempotent) == \
        ("failed", 0.25, "exit 1", False)

    # A step that is no longer running is never rewritten.
    journal.steps.finished(ok, False, 9.0, "late")
    journal.steps.finished(bad, True, 9.0, "late")
    journal.steps.interrupted(ok, "late")
    again = {s.id: s for s in journal.steps.of(inc)}
    assert again == steps


def test_step_interrupted_then_finished_stays_interrupted(journal: Journal) -> None:
    inc = _incident(journal)
    sid = journal.steps.started(inc, 1, "restart", idempotent=False)
    journal.steps.interrupted(sid, "cancelled at shutdown")
    journal.steps.finished(sid, True, 1.0, "finished after all")
    (step,) = journal.steps.of(inc)
    assert (step.state, step.detail) == ("interrupted", "cancelled at shutdown")


def test_step_state_is_constrained(journal: Journal) -> None:
    inc = _incident(journal)
    sid = journal.steps.started(inc, 1, "x", idempotent=True)
    with pytest.raises(sqlite3.IntegrityError):
        with journal.tx() as db:
            db.execute("UPDATE steps SET state = 'bogus' WHERE id = ?", (sid,))


def test_recover_interrupted(path: Path) -> None:
    j = Journal(path)
    crashed = _incident(j, "web", state="remediating")
    finished = _incident(j, "db", state="remediating")
    s_done = j.steps.started(crashed, 1, "backup", idempotent=True)
    j.steps.finished(s_done, True, 0.1, "ok")
    s_running = j.steps.started(crashed, 2, "restart_service", idempotent=False)
    s_other = j.steps.started(finished, 1, "restore", idempotent=False)
    j.steps.finished(s_other, False, 0.2, "boom")
    j.close()  # the daemon died here

    j = Journal(path)
    try:
        held = j.steps.recover_interrupted()
        assert len(held) == 1
        inc, step = held[0]
        assert (inc.id, inc.state) == (crashed, "held")
        assert inc.held_reason and "restart_service" in inc.held_reason
        assert (step.id, step.name, step.state) == (s_running, "restart_service", "interrupted")

        states = {s.id: s.state for s in j.steps.of(crashed)}
        assert states == {s_done: "done", s_running: "interrupted"}
        assert [s.state for s in j.steps.of(finished)] == ["failed"]
        assert j.incidents.get(finished).state == "remediating"  # type: ignore[union-attr]
        assert "held" in [e for _, e, _ in j.incidents.timeline(crashed)]
        # Held is an open state: the target keeps its incident until a person decides.
        assert j.incidents.open_for("web").id == crashed  # type: ignore[union-attr]

        assert j.steps.recover_interrupted() == []
    finally:
        j.close()


def test_recover_interrupted_with_two_running_steps_in_one_incident(journal: Journal) -> None:
    inc = _incident(journal, state="remediating")
    a = journal.steps.started(inc, 1, "a", idempotent=True)
    b = journal.steps.started(inc, 2, "b", idempotent=False)
    held = journal.steps.recover_interrupted()
    assert sorted(s.id for _, s in held) == [a, b]
    assert {s.state for s in journal.steps.of(inc)} == {"interrupted"}
    assert journal.incidents.get(inc).state == "held"  # type: ignore[union-attr]


# -- incidents -----------------------------------------------------------------------------------

@pytest.mark.parametrize("state", sorted(OPEN_STATES))
def test_open_incident_for_finds_open_states(journal: Journal, state: str) -> None:
    inc = _incident(journal, state=state)
    found = journal.incidents.open_for("web")
    assert found is not None and found.id == inc
    assert journal.incidents.open_for("other") is None


@pytest.mark.parametrize("state", ["resolved", "closed", "failed", "denied"])
def test_open_incident_for_ignores_closed_states(journal: Journal, state: str) -> None:
    assert state not in OPEN_STATES
    _incident(journal, state=state)
    assert journal.incidents.open_for("web") is None


def test_open_incident_for_returns_the_newest_open_one(journal: Journal) -> None:
    old = _incident(journal, state="escalated")
    journal.incidents.update(old, "resolved", state="resolved")
    assert journal.incidents.open_for("web") is None
    new = _incident(journal)
    assert journal.incidents.open_for("web").id == new  # type: ignore[union-attr]
    assert [i.id for i in journal.incidents.recent(10)] == [new, old]


# -- ledger and breakers -------------------------------------------------------------------------

def test_ledger_round_trip_and_mark_bad(path: Path) -> None:
    j = Journal(path)
    v1 = LedgerEntry("aaa111", T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=31))
    v2 = LedgerEntry("bbb222", T0 + timedelta(minutes=5), T0 + timedelta(minutes=5))
    j.ledger.save("web", v1)
    j.ledger.save("web", v2)
    j.ledger.save("other", LedgerEntry("ccc333", T0))
    assert j.ledger.entries("web") == [v1, v2]
    assert j.ledger.entries("web")[0].known_good

    # An update keeps first_seen; the row is the same.
    v2b = LedgerEntry("bbb222", T0 + timedelta(hours=1), T0 + timedelta(minutes=5),
                      T0 + timedelta(minutes=6))
    j.ledger.save("web", v2b)
    assert j.ledger.entries("web")[1] == LedgerEntry("bbb222", v2.first_seen, v2b.healthy_since,
                                                     v2b.known_good_at)

    j.ledger.mark_bad("web", "aaa111", "crash-looped after deploy")
    j.ledger.mark_bad("web", "ddd444", "never seen before")  # an unknown version is recorded as bad
    j.close()

    j = Journal(path)
    try:
        entries = {e.version: e for e in j.ledger.entries("web")}
        assert set(entries) == {"aaa111", "bbb222", "ddd444"}
        assert entries["aaa111"].bad_at is not None and not entries["aaa111"].known_good
        assert entries["aaa111"].known_good_at == v1.known_good_at  # history kept
        assert entries["bbb222"].known_good and entries["bbb222"].bad_at is None
        assert entries["ddd444"].bad_at is not None and entries["ddd444"].known_good_at is None
        reason = j.db.execute("SELECT bad_reason FROM ledger WHERE version = 'aaa111'").fetchone()
        assert reason[0] == "crash-looped after deploy"
        assert [e.version for e in j.ledger.entries("other")] == ["ccc333"]
    finally:
        j.close()


def test_breaker_round_trip(path: Path) -> None:
    j = Journal(path)
    assert j.breakers.get("web", "deployment") == Breaker()
    failures = (T0, T0 + timedelta(minutes=1))
    opened = Breaker(BreakerMode.OPEN, failures, T0 + timedelta(minutes=1))
    j.breakers.save("web", "deployment", opened)
    j.breakers.save("web", "database", Breaker(BreakerMode.HALF_OPEN, (T0,), T0))
    j.close()

    j = Journal(path)
    try:
        assert j.breakers.get("web", "deployment") == opened
        assert j.breakers.get("web", "database") == Breaker(BreakerMode.HALF_OPEN, (T0,), T0)
        j.breakers.save("web", "deployment", Breaker())
        assert j.breakers.get("web", "deployment") == Breaker()
        assert sorted((t, k, b.mode) for t, k, b in j.breakers.all()) == [
            ("web", "database", BreakerMode.HALF_OPEN), ("web", "deployment", BreakerMode.CLOSED)]
    finally:
        j.close()


# -- outbox and audit ----------------------------------------------------------------------------

def test_enqueue_mail_is_idempotent_per_message_id(journal: Journal) -> None:
    inc = _incident(journal)
    journal.mail.enqueue("<m1@host>", inc, ["a@example.com"], "first", "body 1")
    journal.mail.enqueue("<m1@host>", inc, ["b@example.com"], "second", "body 2")
    journal.mail.enqueue("<m2@host>", None, ["a@example.com"], "other", "body")
    rows = journal.db.execute("SELECT message_id, subject, recipients FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("<m1@host>", "first", '["a@example.com"]'),
                                        ("<m2@host>", "other", '["a@example.com"]')]
    assert journal.mail.counts() == {"sent": 0, "queued": 2}

    due = journal.mail.due(datetime.now(UTC) + timedelta(seconds=1))
    assert [m.message_id for m in due] == ["<m1@host>", "<m2@host>"]
    journal.mail.sent(due[0].id)
    # Sent once, re-enqueueing the same message does not queue it again.
    journal.mail.enqueue("<m1@host>", inc, ["a@example.com"], "first", "body 1")
    assert journal.mail.counts() == {"sent": 1, "queued": 1}


def test_failed_mail_waits_for_its_retry_time(journal: Journal) -> None:
    journal.mail.enqueue("<m1@host>", None, ["a@example.com"], "s", "b")
    now = datetime.now(UTC)
    (mail,) = journal.mail.due(now + timedelta(seconds=1))
    journal.mail.failed(mail.id, "ConnectionRefusedError: nope", now + timedelta(seconds=60))
    assert journal.mail.due(now + timedelta(seconds=59)) == []
    (again,) = journal.mail.due(now + timedelta(seconds=61))
    assert (again.attempts, again.last_error) == (1, "ConnectionRefusedError: nope")


def test_audit_rows_chain(journal: Journal) -> None:
    journal.audit.record(0, 10, "status", {}, "ok")
    journal.audit.record(1000, 11, "ack", {"id": 3}, "error:not_found")
    rows = journal.db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    assert rows[0]["prev_hash"] == ""
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert (rows[1]["uid"], rows[1]["pid"], rows[1]["cmd"], rows[1]["args"], rows[1]["outcome"]) \
        == (1000, 11, "ack", '{"id": 3}', "error:not_found")

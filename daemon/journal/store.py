"""The journal's store: incidents, steps, ledger, breakers, outbox and audit in SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from daemon.journal.schema import MIGRATIONS
from policies.breaker import Breaker, BreakerMode
from policies.ledger import LedgerEntry
from policies.lifecycle import OPEN_STATES, check_transition
from policies.overrides import Override, OverrideKind
from policies.targets import BackupEntry


class JournalError(Exception):
    pass


def now_utc() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Incident:
    id: int
    target: str
    incident_class: str
    state: str
    reason: str
    from_version: str | None
    to_version: str | None
    onset_at: datetime | None
    detected_at: datetime
    started_at: datetime | None
    rolled_back_at: datetime | None
    verified_at: datetime | None
    closed_at: datetime | None
    held_reason: str | None
    evidence: dict[str, Any]

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Incident:
        return cls(
            id=r["id"], target=r["target"], incident_class=r["incident_class"], state=r["state"],
            reason=r["reason"], from_version=r["from_version"], to_version=r["to_version"],
            onset_at=_dt(r["onset_at"]), detected_at=_dt(r["detected_at"]) or now_utc(),
            started_at=_dt(r["started_at"]), rolled_back_at=_dt(r["rolled_back_at"]),
            verified_at=_dt(r["verified_at"]), closed_at=_dt(r["closed_at"]),
            held_reason=r["held_reason"], evidence=json.loads(r["evidence"]),
        )


@dataclass(frozen=True)
class StepRecord:
    id: int
    incident_id: int
    seq: int
    name: str
    state: str
    idempotent: bool
    started_at: datetime
    duration: float | None
    detail: str


class Journal:
    def __init__(self, path: Path, db: Any = None) -> None:
        self.path = path
        if db is not None:  # PostgreSQL (daemon/journal/pg.py): sqlite3's surface, its own setup
            self.db = cast(sqlite3.Connection, db)
            self._migrate()
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        # isolation_level=None: we issue BEGIN ourselves so every write is one explicit commit.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(path, 0o600)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a step journaled as running must be on disk before the step starts.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise JournalError(
                f"{self.path}: schema version {version} is newer than this rollbackd "
                f"understands ({len(MIGRATIONS)}); upgrade rollbackd"
            )
        for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.tx():
                for stmt in sql.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version={i}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- incidents ---------------------------------------------------------------------------

    def open_incident(
        self, target: str, incident_class: str, reason: str, onset: datetime | None,
        evidence: dict[str, Any], state: str = "open", automatic: bool = True,
    ) -> int:
        at = now_utc()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO incidents (target, incident_class, state, reason, onset_at,"
                " detected_at, evidence, automatic) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (target, incident_class, state, reason, _ts(onset), _ts(at),
                 json.dumps(evidence, default=str), int(automatic)),
            )
            incident_id = int(cur.lastrowid or 0)
            self._event(incident_id, "detected", reason, at)
        return incident_id

    def _event(self, incident_id: int, event: str, detail: str, at: datetime | None) -> None:
        self.db.execute(
            "INSERT INTO timeline (incident_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (incident_id, _ts(at or now_utc()), event, detail),
        )

    def add_event(self, incident_id: int, event: str, detail: str = "") -> None:
        with self.tx():
            self._event(incident_id, event, detail, None)

    _UPDATABLE = {"state", "reason", "plan_kind", "from_version", "to_version", "started_at",
                  "rolled_back_at", "verified_at", "closed_at", "held_reason", "acked_at", "plan"}

    def update_incident(self, incident_id: int, event: str | None = None, detail: str = "",
                        **fields: Any) -> None:
        bad = set(fields) - self._UPDATABLE
        if bad:
            raise JournalError(f"not updatable: {sorted(bad)}")
        values = [_ts(v) if isinstance(v, datetime) else v for v in fields.values()]
        with self.tx() as db:
            if "state" in fields:
                row = db.execute("SELECT state FROM incidents WHERE id = ?",
                                 (incident_id,)).fetchone()
                if row is None:
                    raise JournalError(f"no incident {incident_id}")
                check_transition(row[0], fields["state"])
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE incidents SET {cols} WHERE id = ?", (*values, incident_id))
            if event:
                self._event(incident_id, event, detail, None)

    def set_evidence(self, incident_id: int, evidence: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("UPDATE incidents SET evidence = ? WHERE id = ?",
                       (json.dumps(evidence, default=str), incident_id))
            self._event(incident_id, "evidence", "evidence captured", None)

    def incident(self, incident_id: int) -> Incident | None:
        row = self.db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return Incident.from_row(row) if row else None

    def open_incident_for(self, target: str) -> Incident | None:
        marks = ",".join("?" * len(OPEN_STATES))
        row = self.db.execute(
            f"SELECT * FROM incidents WHERE target = ? AND state IN ({marks}) ORDER BY id DESC",
            (target, *sorted(OPEN_STATES)),
        ).fetchone()
        return Incident.from_row(row) if row else None

    def incidents(self, limit: int = 50) -> list[Incident]:
        rows = self.db.execute("SELECT * FROM incidents ORDER BY id DESC LIMIT ?", (limit,))
        return [Incident.from_row(r) for r in rows]

    def timeline(self, incident_id: int) -> list[tuple[datetime, str, str]]:
        rows = self.db.execute(
            "SELECT at, event, detail FROM timeline WHERE incident_id = ? ORDER BY id",
            (incident_id,),
        )
        return [(_dt(r["at"]) or now_utc(), r["event"], r["detail"]) for r in rows]

    def rollback_starts(self, target: str) -> tuple[datetime, ...]:
        rows = self.db.execute(
            "SELECT started_at FROM incidents WHERE target = ? AND automatic = 1"
            " AND started_at IS NOT NULL ORDER BY started_at",
            (target,),
        )
        return tuple(d for r in rows if (d := _dt(r[0])))

    # -- steps: journaled `running` before, `done`/`failed` after ----------------------------

    def step_started(self, incident_id: int, seq: int, name: str, idempotent: bool) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO steps (incident_id, seq, name, idempotent, state, started_at)"
                " VALUES (?, ?, ?, ?, 'running', ?)",
                (incident_id, seq, name, int(idempotent), _ts(now_utc())),
            )
        return int(cur.lastrowid or 0)

    def step_finished(self, step_id: int, ok: bool, duration: float, detail: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE steps SET state = ?, finished_at = ?, duration = ?, detail = ?"
                " WHERE id = ? AND state = 'running'",
                ("done" if ok else "failed", _ts(now_utc()), duration, detail, step_id),
            )

    def step_interrupted(self, step_id: int, detail: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE steps SET state = 'interrupted', finished_at = ?, detail = ?"
                " WHERE id = ? AND state = 'running'", (_ts(now_utc()), detail, step_id),
            )

    def steps(self, incident_id: int) -> list[StepRecord]:
        rows = self.db.execute(
            "SELECT * FROM steps WHERE incident_id = ? ORDER BY seq, id", (incident_id,)
        )
        return [
            StepRecord(r["id"], r["incident_id"], r["seq"], r["name"], r["state"],
                       bool(r["idempotent"]), _dt(r["started_at"]) or now_utc(), r["duration"],
                       r["detail"])
            for r in rows
        ]

    def running_steps(self, target: str | None = None) -> list[tuple[Incident, StepRecord]]:
        """Steps journaled `running`: at start-up, those a crash cut off. `target`: only that
        target's (an instance of several just became its owner)."""
        sql = "SELECT id, incident_id FROM steps WHERE state = 'running'"
        args: list[str] = []
        if target is not None:
            sql += " AND incident_id IN (SELECT id FROM incidents WHERE target = ?)"
            args.append(target)
        found: list[tuple[Incident, StepRecord]] = []
        for step_id, incident_id in self.db.execute(sql + " ORDER BY id", args).fetchall():
            inc = self.incident(incident_id)
            assert inc is not None
            found.append((inc, next(s for s in self.steps(incident_id) if s.id == step_id)))
        return found

    def settle_step(self, step_id: int, done: bool, detail: str) -> None:
        """A step a crash cut off, once its effect was checked: found done, or interrupted."""
        with self.tx() as db:
            db.execute(
                "UPDATE steps SET state = ?, finished_at = ?, detail = ?"
                " WHERE id = ? AND state = 'running'",
                ("done" if done else "interrupted", _ts(now_utc()), detail, step_id),
            )

    def hold(self, incident_id: int, why: str) -> Incident:
        self.update_incident(incident_id, "held", why, state="held", held_reason=why)
        inc = self.incident(incident_id)
        assert inc is not None
        return inc

    def recover_interrupted(self, target: str | None = None) -> list[tuple[Incident, StepRecord]]:
        """Steps left `running` by a crash become `interrupted` and their incidents are held,
        unasked: for incidents no executor can be asked about (daemon/incidents/recovery.py
        checks each step's effect first where it can)."""
        held: list[tuple[Incident, StepRecord]] = []
        for _, step in self.running_steps(target):
            self.settle_step(step.id, False, step.detail)
            why = (f"step {step.name} was interrupted (daemon stopped while it ran); "
                   "not run again automatically: a person must decide")
            held.append((self.hold(step.incident_id, why),
                         next(s for s in self.steps(step.incident_id) if s.id == step.id)))
        return held

    def mail_since(self, incident_id: int, since: datetime) -> list[str]:
        """Message-IDs of the incident's mail queued (or held for a digest) at or after `since`."""
        rows = self.db.execute(
            "SELECT message_id FROM outbox WHERE incident_id = ? AND created_at >= ?"
            " UNION SELECT message_id FROM mail_held WHERE incident_id = ? AND created_at >= ?",
            (incident_id, _ts(since), incident_id, _ts(since)))
        return sorted(str(r[0]) for r in rows)

    # -- known-good ledger -------------------------------------------------------------------

    def ledger(self, target: str) -> list[LedgerEntry]:
        rows = self.db.execute("SELECT * FROM ledger WHERE target = ? ORDER BY first_seen",
                               (target,))
        return [
            LedgerEntry(r["version"], _dt(r["first_seen"]) or now_utc(), _dt(r["healthy_since"]),
                        _dt(r["known_good_at"]), _dt(r["bad_at"]), r["alembic_revision"],
                        r["key_fingerprint"], r["config_hash"], r["bad_reason"])
            for r in rows
        ]

    def save_ledger(self, target: str, e: LedgerEntry) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO ledger (target, version, first_seen, healthy_since, known_good_at,"
                " bad_at, alembic_revision, key_fingerprint, config_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, version) DO UPDATE SET"
                " healthy_since = excluded.healthy_since, known_good_at = excluded.known_good_at,"
                " bad_at = excluded.bad_at, alembic_revision = excluded.alembic_revision,"
                " key_fingerprint = excluded.key_fingerprint, config_hash = excluded.config_hash",
                (target, e.version, _ts(e.first_seen), _ts(e.healthy_since),
                 _ts(e.known_good_at), _ts(e.bad_at), e.alembic_revision, e.key_fingerprint,
                 e.config_hash),
            )

    def unmark_bad(self, target: str, version: str) -> bool:
        with self.tx() as db:
            cur = db.execute("UPDATE ledger SET bad_at = NULL, bad_reason = NULL"
                             " WHERE target = ? AND version = ?", (target, version))
        return cur.rowcount > 0

    def mark_bad(self, target: str, version: str, reason: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO ledger (target, version, first_seen, bad_at, bad_reason)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target, version) DO UPDATE SET"
                " bad_at = excluded.bad_at, bad_reason = excluded.bad_reason",
                (target, version, _ts(now_utc()), _ts(now_utc()), reason),
            )

    # -- backup catalog ----------------------------------------------------------------------

    def catalog_backup(self, target: str, kind: str, path: str, size: int, sha256: str,
                       duration: float, versions: dict[str, Any], verified: bool,
                       verify_error: str | None = None) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO backups (target, kind, path, created_at, size, sha256, verified_at,"
                " versions, verify_error, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (target, kind, path, _ts(now_utc()), size, sha256,
                 _ts(now_utc()) if verified else None, json.dumps(versions), verify_error,
                 duration),
            )
        return int(cur.lastrowid or 0)

    def backup_rows(self, target: str, kind: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM backups WHERE target = ?"
        args: list[Any] = [target]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        return self.db.execute(sql + " ORDER BY created_at", args).fetchall()

    def backup_entries(self, target: str, kind: str) -> tuple[BackupEntry, ...]:
        entries = []
        for r in self.backup_rows(target, kind):
            versions = json.loads(r["versions"])
            entries.append(BackupEntry(
                r["id"], _dt(r["created_at"]) or now_utc(), r["verified_at"] is not None, True,
                versions.get("alembic_revision"), incident=versions.get("incident")))
        return tuple(entries)

    def forget_backup(self, backup_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    # -- circuit breakers ----------------------------------------------------------------------

    def breaker(self, target: str, plan_kind: str) -> Breaker:
        r = self.db.execute("SELECT * FROM breakers WHERE target = ? AND plan_kind = ?",
                            (target, plan_kind)).fetchone()
        if r is None:
            return Breaker()
        failures = tuple(d for x in json.loads(r["failures"]) if (d := _dt(x)))
        return Breaker(BreakerMode(r["mode"]), failures, _dt(r["opened_at"]))

    def save_breaker(self, target: str, plan_kind: str, b: Breaker) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO breakers (target, plan_kind, mode, failures, opened_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target, plan_kind) DO UPDATE SET"
                " mode = excluded.mode, failures = excluded.failures,"
                " opened_at = excluded.opened_at, updated_at = excluded.updated_at",
                (target, plan_kind, b.mode.value, json.dumps([_ts(t) for t in b.failures]),
                 _ts(b.opened_at), _ts(now_utc())),
            )

    def breakers(self) -> list[tuple[str, str, Breaker]]:
        rows = self.db.execute("SELECT target, plan_kind FROM breakers ORDER BY target").fetchall()
        return [(t, k, self.breaker(t, k)) for t, k in rows]

    # -- operator overrides: pause, silence, maintenance; each with a reason and an expiry ------

    def add_override(self, o: Override) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO overrides (kind, target, created_at, until, reason, by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (o.kind.value, o.target, _ts(now_utc()), _ts(o.until), o.reason, o.by),
            )
        return int(cur.lastrowid or 0)

    def end_overrides(self, kind: str | None, target: str | None) -> int:
        """End overrides now (all kinds when kind is None; target None: the global ones)."""
        sql = "UPDATE overrides SET ended_at = ? WHERE ended_at IS NULL AND until > ?"
        args: list[Any] = [_ts(now_utc()), _ts(now_utc())]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " AND target IS ?"
        args.append(target)
        with self.tx() as db:
            return db.execute(sql, args).rowcount

    def overrides(self, now: datetime | None = None) -> tuple[Override, ...]:
        rows = self.db.execute(
            "SELECT * FROM overrides WHERE ended_at IS NULL AND until > ? ORDER BY id",
            (_ts(now or now_utc()),),
        )
        return tuple(
            Override(OverrideKind(r["kind"]), r["target"], _dt(r["until"]) or now_utc(),
                     r["reason"], r["by"])
            for r in rows
        )

    # -- email outbox ----------------------------------------------------------------------------

    def enqueue_mail(self, message_id: str, incident_id: int | None, recipients: list[str],
                     subject: str, body: str) -> None:
        at = _ts(now_utc())
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, incident_id, recipients, subject, body,"
                " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, incident_id, json.dumps(recipients), subject, body, at, at),
            )

    def due_mail(self, now: datetime, limit: int = 20) -> list[sqlite3.Row]:
        # An incident's mails go out in order: one waiting for its retry holds back the rest.
        return self.db.execute(
            "SELECT * FROM outbox o WHERE sent_at IS NULL AND next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.sent_at IS NULL"
            " AND e.incident_id = o.incident_id AND e.id < o.id AND e.next_attempt_at > ?)"
            " ORDER BY id LIMIT ?", (_ts(now), _ts(now), limit),
        ).fetchall()

    def mail_sent(self, outbox_id: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                       (_ts(now_utc()), outbox_id))

    def mail_failed(self, outbox_id: int, error: str, next_attempt: datetime) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?", (error, _ts(next_attempt), outbox_id),
            )

    def outbox_counts(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT SUM(sent_at IS NOT NULL), SUM(sent_at IS NULL) FROM outbox").fetchone()
        return {"sent": row[0] or 0, "queued": row[1] or 0}

    # -- audit log: each entry chained to the previous by hash ---------------------------------

    def audit(self, uid: int | None, pid: int | None, cmd: str, args: dict[str, Any],
              outcome: str) -> None:
        at = _ts(now_utc())
        with self.tx() as db:
            prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev_hash = prev[0] if prev else ""
            args_json = json.dumps(args, sort_keys=True, default=str)
            digest = hashlib.sha256(
                json.dumps([prev_hash, at, uid, pid, cmd, args_json, outcome]).encode()
            ).hexdigest()
            db.execute(
                "INSERT INTO audit (at, uid, pid, cmd, args, outcome, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, uid, pid, cmd, args_json, outcome, prev_hash, digest),
            )

    # -- escalation: routing facts, mail order per incident, tiers, storm digests ---------------

    def mail_context(self, incident_id: int) -> sqlite3.Row | None:
        """What routing needs to know about an incident, in one read."""
        return self.db.execute(
            "SELECT i.id, i.target, i.incident_class, i.state, i.reason, i.acked_at,"
            " i.detected_at, EXISTS (SELECT 1 FROM timeline t WHERE t.incident_id = i.id"
            " AND t.event = 'failed') AS rollback_failed, EXISTS (SELECT 1 FROM breakers b"
            " WHERE b.target = i.target AND b.mode = 'open') AS breaker_open"
            " FROM incidents i WHERE i.id = ?", (incident_id,),
        ).fetchone()

    def incident_extras(self, incident_id: int) -> dict[str, Any]:
        """What an incident report needs beyond `Incident`: plan, acknowledgement, tier."""
        row = self.db.execute(
            "SELECT i.plan_kind, i.plan, i.acked_at, i.automatic, e.tier, e.paged"
            " FROM incidents i LEFT JOIN escalations e ON e.incident_id = i.id WHERE i.id = ?",
            (incident_id,)).fetchone()
        if row is None:
            return {}
        return {"plan_kind": row["plan_kind"], "plan": json.loads(row["plan"] or "null"),
                "acked_at": _dt(row["acked_at"]), "automatic": bool(row["automatic"]),
                "tier": row["tier"], "paged": json.loads(row["paged"] or "[]")}

    def timeline_changes(self, after_id: int) -> list[tuple[int, int, datetime]]:
        """(incident, newest timeline id, its time) of incidents with events after `after_id`."""
        rows = self.db.execute("SELECT incident_id, MAX(id), MAX(at) FROM timeline WHERE id > ?"
                               " GROUP BY incident_id ORDER BY incident_id", (after_id,))
        return [(int(r[0]), int(r[1]), _dt(r[2]) or now_utc()) for r in rows]

    def storm_rank(self, incident_id: int, window: float) -> int:
        """How many incidents (this one included) were detected within `window` seconds up to
        this one. Fixed once the incident exists, so its mails are grouped, or not, for good."""
        inc = self.incident(incident_id)
        if inc is None:
            return 0
        since = _ts(inc.detected_at - timedelta(seconds=window))
        row = self.db.execute("SELECT COUNT(*) FROM incidents WHERE id <= ? AND detected_at > ?",
                              (incident_id, since)).fetchone()
        return int(row[0])

    def thread_root(self, incident_id: int) -> str | None:
        """The Message-ID of the first mail actually enqueued for the incident."""
        row = self.db.execute("SELECT message_id FROM outbox WHERE incident_id = ?"
                              " ORDER BY id LIMIT 1", (incident_id,)).fetchone()
        return str(row[0]) if row else None

    def incident_mailed(self, incident_id: int) -> bool:
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE incident_id = ?)"
            " OR EXISTS (SELECT 1 FROM mail_held WHERE incident_id = ?)",
            (incident_id, incident_id)).fetchone()
        return bool(row[0])

    def due_mail_in_order(self, now: datetime, limit: int = 20) -> list[sqlite3.Row]:
        """Due mail, but never a mail while an earlier one of its incident is still unsent: a
        mail waiting out its backoff holds back the rest of its incident's thread."""
        return self.db.execute(
            "SELECT * FROM outbox o WHERE o.sent_at IS NULL AND o.next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.incident_id = o.incident_id"
            " AND p.sent_at IS NULL AND p.id < o.id) ORDER BY o.id LIMIT ?", (_ts(now), limit),
        ).fetchall()

    def mail_partly_sent(self, outbox_id: int, remaining: list[str], error: str,
                         next_attempt: datetime) -> None:
        """Some recipients were accepted: only the refused ones are tried again."""
        with self.tx() as db:
            db.execute(
                "UPDATE outbox SET recipients = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ? WHERE id = ?",
                (json.dumps(remaining), error, _ts(next_attempt), outbox_id),
            )

    def escalation(self, incident_id: int) -> tuple[int, list[str]] | None:
        """The tier an incident has reached and the addresses its escalations paged."""
        row = self.db.execute("SELECT tier, paged FROM escalations WHERE incident_id = ?",
                              (incident_id,)).fetchone()
        return (int(row[0]), list(json.loads(row[1]))) if row else None

    def start_ladder(self, incident_id: int, state: str) -> None:
        """Tier 1 was mailed now. A new reason to need a person (another state) restarts the
        clock, at the tier already reached."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO escalations (incident_id, tier, since, state) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (incident_id) DO UPDATE SET since = excluded.since,"
                " state = excluded.state WHERE escalations.state != excluded.state",
                (incident_id, _ts(now_utc()), state),
            )

    def ladders_waiting(self, states: frozenset[str]) -> list[sqlite3.Row]:
        """Escalated incidents nobody has acknowledged, still in a state that needs a person."""
        marks = ",".join("?" * len(states))
        return self.db.execute(
            "SELECT e.incident_id, e.tier, e.since, e.paged, i.target, i.incident_class,"
            " i.reason, i.state, i.detected_at FROM escalations e JOIN incidents i"
            f" ON i.id = e.incident_id WHERE i.acked_at IS NULL AND i.state IN ({marks})"
            " ORDER BY e.incident_id", sorted(states),
        ).fetchall()

    def ladder_step(self, incident_id: int, tier: int, since: datetime, paged: list[str]) -> None:
        with self.tx() as db:
            db.execute("UPDATE escalations SET tier = ?, since = ?, paged = ?"
                       " WHERE incident_id = ?", (tier, _ts(since), json.dumps(paged), incident_id))
            self._event(incident_id, "paged", f"tier {tier}: {', '.join(paged)}", since)

    def hold_mail(self, message_id: str, incident_id: int, event: str, recipients: list[str],
                  subject: str, body: str) -> None:
        at = _ts(now_utc())
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO mail_held (message_id, incident_id, event, recipients,"
                " subject, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, incident_id, event, json.dumps(recipients), subject, body, at),
            )

    def held_pending(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT h.*, i.target, i.incident_class, i.state FROM mail_held h"
            " LEFT JOIN incidents i ON i.id = h.incident_id"
            " WHERE h.digest_message_id IS NULL ORDER BY h.id").fetchall()

    def enqueue_digest(self, held_ids: list[int], message_id: str, recipients: list[str],
                       subject: str, body: str) -> None:
        """The digest and the marks on what it lists, in one commit: listed exactly once."""
        at = _ts(now_utc())
        marks = ",".join("?" * len(held_ids))
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, incident_id, recipients, subject, body,"
                " created_at, next_attempt_at) VALUES (?, NULL, ?, ?, ?, ?, ?)",
                (message_id, json.dumps(recipients), subject, body, at, at),
            )
            db.execute(f"UPDATE mail_held SET digest_message_id = ? WHERE id IN ({marks})",
                       (message_id, *held_ids))

    # -- backup catalog: one row, and a backup found unusable after it was verified ------------

    def backup_row(self, backup_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone()

    def backup_unusable(self, backup_id: int, why: str) -> None:
        """Its file changed or vanished since it was verified: it no longer counts as verified."""
        with self.tx() as db:
            db.execute("UPDATE backups SET verified_at = NULL, verify_error = ? WHERE id = ?",
                       (why, backup_id))

    # -- control: audit verification, manual incidents -----------------------------------------

    @staticmethod
    def audit_digest(prev_hash: str, at: str, uid: int | None, pid: int | None, cmd: str,
                     args_json: str, outcome: str) -> str:
        """The hash of one audit row, exactly as audit() computes it."""
        return hashlib.sha256(
            json.dumps([prev_hash, at, uid, pid, cmd, args_json, outcome]).encode()
        ).hexdigest()

    def audit_rows(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()

    def verify_audit(self) -> tuple[int, int | None, str]:
        """(rows checked, id of the first broken row or None, why it is broken)."""
        prev_hash, checked = "", 0
        for r in self.db.execute("SELECT * FROM audit ORDER BY id"):
            if r["prev_hash"] != prev_hash:
                return checked, r["id"], ("its link to the previous row does not match "
                                          "(a row before it was removed or rewritten)")
            digest = self.audit_digest(r["prev_hash"], r["at"], r["uid"], r["pid"], r["cmd"],
                                       r["args"], r["outcome"])
            if digest != r["hash"]:
                return checked, r["id"], "its contents do not match its hash (edited)"
            prev_hash, checked = r["hash"], checked + 1
        return checked, None, ""

    def mark_manual(self, incident_id: int) -> None:
        """A person took the incident over: its rollback is not counted as an automatic one."""
        with self.tx() as db:
            db.execute("UPDATE incidents SET automatic = 0 WHERE id = ?", (incident_id,))

    def is_automatic(self, incident_id: int) -> bool:
        row = self.db.execute("SELECT automatic FROM incidents WHERE id = ?",
                              (incident_id,)).fetchone()
        return bool(row and row[0])

    def open_incidents_of(self, target: str, incident_class: str) -> list[Incident]:
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self.db.execute(
            f"SELECT * FROM incidents WHERE target = ? AND incident_class = ?"
            f" AND state IN ({marks}) ORDER BY id", (target, incident_class, *sorted(OPEN_STATES)))
        return [Incident.from_row(r) for r in rows]

"""The journal's schema as forward migrations; PRAGMA user_version is the schema version."""

from __future__ import annotations

# Append only: a released migration is never edited, a new one is added after it.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        incident_class TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        plan_kind TEXT,
        from_version TEXT,
        to_version TEXT,
        onset_at TEXT,
        detected_at TEXT NOT NULL,
        started_at TEXT,
        rolled_back_at TEXT,
        verified_at TEXT,
        closed_at TEXT,
        automatic INTEGER NOT NULL DEFAULT 1,
        held_reason TEXT,
        acked_at TEXT,
        evidence TEXT NOT NULL DEFAULT '{}',
        plan TEXT
    );
    CREATE INDEX incidents_target_state ON incidents (target, state);
    CREATE TABLE timeline (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX timeline_incident ON timeline (incident_id);
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        idempotent INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
        started_at TEXT NOT NULL,
        finished_at TEXT,
        duration REAL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX steps_incident ON steps (incident_id, seq);
    CREATE TABLE ledger (
        target TEXT NOT NULL,
        version TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        healthy_since TEXT,
        known_good_at TEXT,
        bad_at TEXT,
        bad_reason TEXT,
        PRIMARY KEY (target, version)
    );
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
    CREATE TABLE breakers (
        target TEXT NOT NULL,
        plan_kind TEXT NOT NULL,
        mode TEXT NOT NULL,
        failures TEXT NOT NULL DEFAULT '[]',
        opened_at TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (target, plan_kind)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        incident_id INTEGER REFERENCES incidents (id),
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        sent_at TEXT,
        last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox (sent_at, next_attempt_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        uid INTEGER,
        pid INTEGER,
        cmd TEXT NOT NULL,
        args TEXT NOT NULL,
        outcome TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE ledger ADD COLUMN alembic_revision TEXT;
    ALTER TABLE ledger ADD COLUMN key_fingerprint TEXT;
    ALTER TABLE ledger ADD COLUMN config_hash TEXT;
    CREATE TABLE overrides (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT,
        created_at TEXT NOT NULL,
        until TEXT NOT NULL,
        reason TEXT NOT NULL,
        by TEXT NOT NULL DEFAULT '',
        ended_at TEXT
    );
    ALTER TABLE backups ADD COLUMN verify_error TEXT;
    ALTER TABLE backups ADD COLUMN duration REAL;
    """,
    # Escalation: the tier each unacknowledged incident has reached (and who it paged), and the
    # mails a storm held back until a digest lists them.
    """
    CREATE TABLE escalations (
        incident_id INTEGER PRIMARY KEY REFERENCES incidents (id),
        tier INTEGER NOT NULL,
        since TEXT NOT NULL,
        state TEXT NOT NULL,
        paged TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE mail_held (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        incident_id INTEGER REFERENCES incidents (id),
        event TEXT NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        digest_message_id TEXT
    );
    CREATE INDEX mail_held_pending ON mail_held (digest_message_id, id);
    CREATE INDEX outbox_incident ON outbox (incident_id, id);
    CREATE INDEX incidents_detected ON incidents (detected_at);
    """,
    # The scheduled test restore of a backup: when it last ran and, if it failed, why.
    """
    ALTER TABLE backups ADD COLUMN restore_tested_at TEXT;
    ALTER TABLE backups ADD COLUMN restore_test_error TEXT;
    """,
    # The audit chain keyed (HMAC-SHA256): which key signed each row. store.py signs the rows
    # hashed before, in this migration's transaction (AUDIT_KEYED).
    """
    ALTER TABLE audit ADD COLUMN key_id TEXT;
    """,
]

AUDIT_KEYED = 5
"""The schema version whose migration signs the audit rows written before the key."""

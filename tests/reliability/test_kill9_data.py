"""kill -9 at both points of every step of the data plans on the real PostgreSQL and Redis servers.

The walks of tests/reliability/test_kill9_every_step.py (one chain of crashes per plan and point,
see there), for the PostgreSQL restore + swap, the PostgreSQL Alembic downgrade and the Redis
sessions restore. Besides what every walk proves there (each step journaled done once, the
incident resolved or held as the rules say, each event's mail once per recipient, the journal's
integrity), each counts its effects in the servers themselves, never in a log:

- PostgreSQL restore: the database catalog, looked at while the daemon lies dead in each step.
  A database keeps its oid through a rename and gets a new one when it is made again, so one oid
  ever named <db>_restore_<id> means the restored database was created once; the live name
  holding that oid and one <db>_corrupted_* holding the old live oid means the swap renamed
  each once.
- Alembic downgrade: a trigger on alembic_version records every change of the revision.
- Redis: the server's own count of RESTORE commands (INFO commandstats).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from psycopg import sql
from pytest_redis.executor import RedisExecutor

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for
from tests.recovery.support import (
    BAD_REVISION,
    add_bad_migration,
    login,
    migrate_argv,
    pg_connect,
    pg_count,
    pg_revision,
    pg_tables,
    service_argv,
    wait_healthy,
)
from tests.recovery.test_e2e_postgres import GOOD_REVISION, PgApp, drop_users, pg  # noqa: F401
from tests.recovery.test_e2e_redis import (  # noqa: F401 - app_on_redis: a fixture
    SESSIONS,
    app_on_redis,
    log_in,
    me,
    redis_config,
)
from tests.reliability.kill9 import CHECKLIST, assert_survived, both_points, daemon_for, walk
from tests.reliability.support import counted, journal_rows, runs, toml_argv
from tests.reliability.test_kill9_every_step import DOWNGRADE_STEPS, verified

# A walk is a chain of 10-16 daemon starts: on a busy 2-core machine it outlasts the default.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def incident_backups(d: DaemonProcess, kind: str, incident_id: int) -> int:
    """Backups the plan took of this incident (the checklist's, a snapshot step's)."""
    return len(journal_rows(d, "SELECT 1 FROM backups WHERE kind = ? AND "
                               "json_extract(versions, '$.incident') = ?", kind, incident_id))


# -- PostgreSQL -----------------------------------------------------------------------------

# The login probe every 2 s: the sample app hashes the password, which takes over a second on a
# busy 2-core machine, and a probe still running when its next slot comes is an overrun (v1 never
# becomes known-good).
def pg_section(app: PgApp, tmp_path: Path, markers: dict[str, Path], policy: str) -> str:
    ws = app.ws
    password = tmp_path / "probe-password"
    password.write_text(DEMO_USER[1] + "\n")
    password.chmod(0o600)
    return f"""
[targets.grading.probes.integrity]
kind = "postgres_integrity"
dsn_file = "{app.dsn_file}"
interval = "500ms"
timeout = "3s"
failure_threshold = 1
required_tables = ["users", "grades"]

[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{password}"
interval = "2s"
timeout = "5s"
failure_threshold = 3

[targets.grading.database]
kind = "postgres"
dsn_file = "{app.dsn_file}"
stop = {toml_argv(counted(service_argv(ws, "stop"), markers["stop"]))}
start = {toml_argv(counted(service_argv(ws, "start"), markers["start"]))}
migrate = {toml_argv(counted(migrate_argv(), markers["migrate"]))}
cwd = "{ws.app_dir}"
env_file = "{ws.env_file}"
tables = ["users", "grades"]
command_timeout = "30s"
restore_timeout = "60s"

[targets.grading.backups]
interval = "1h"
keep = "7d"

[targets.grading.policy]
{policy}
"""


def pg_daemon(app: PgApp, smtp: SmtpSink, tmp_path: Path, point: str, first: str,
              policy: str) -> tuple[DaemonProcess, dict[str, Path]]:
    ws = app.ws
    markers = {m: tmp_path / m for m in ("stop", "start", "migrate", "restart")}
    text = ws.config_toml(smtp.port, extra="test_hooks = true",
                          restart_argv=counted(ws.restart_argv(), markers["restart"]),
                          targets_extra=pg_section(app, tmp_path, markers, policy))
    return daemon_for(tmp_path, text, point, first).start(), markers


def ready(d: DaemonProcess, ws: Workspace, kind: str) -> None:
    """v1 is known-good and a verified backup of `kind` is there: the plan has a target."""
    good = ws.head()
    try:
        wait_for(lambda: known_good(d, good), 30, "v1 known-good")
        wait_for(lambda: verified(d, kind), 30, f"a verified {kind} backup")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{d.log_text()[-3000:]}") from None


def catalog(app: PgApp) -> dict[str, int]:
    """The app's database and those named after it (restored, kept), by name: their oids.
    (The scheduled test restore's scratch databases come and go on their own.)"""
    with pg_connect(app.dsn, "postgres") as db:
        rows = db.execute("SELECT datname, oid FROM pg_database WHERE starts_with(datname, %s)",
                          (app.db,)).fetchall()
    return {str(name): int(oid) for name, oid in rows if "_restoretest_" not in str(name)}


def named(dbs: dict[str, int], tag: str) -> dict[str, int]:
    """The databases named <db>_<tag>_*."""
    return {n: oid for n, oid in dbs.items() if f"_{tag}_" in n}


PG_RESTORE_STEPS = [*CHECKLIST, "prepare_restore", "swap_database", "check_restored",
                    "start_app", "verify"]


@both_points
def test_postgres_restore_and_swap_survive_kill9_at_every_step(
        pg: PgApp, smtp: SmtpSink, tmp_path: Path, point: str) -> None:  # noqa: F811
    d, markers = pg_daemon(pg, smtp, tmp_path, point, PG_RESTORE_STEPS[0],
                           "auto_destructive = true\nrestore_loss_threshold = 100\n")
    seen: dict[str, dict[str, int]] = {}

    def look(step: str) -> None:
        seen[step] = catalog(pg)

    try:
        ready(d, pg.ws, "database")
        before = catalog(pg)
        assert list(before) == [pg.db]
        w = walk(d, smtp, point, PG_RESTORE_STEPS, lambda: drop_users(pg), look)
        restored = {oid for dbs in seen.values() for oid in named(dbs, "restore").values()}
        # Created once: one oid was ever named <db>_restore_<id> ...
        assert len(restored) == 1, seen
        # ... first seen right after prepare_restore made it (at the kill after its effect) or
        # at the next step (it was made after the kill at its start, on approval) ...
        first = "prepare_restore" if point == "after" else "swap_database"
        assert set(named(seen[first], "restore").values()) == restored
        assert not named(seen["prepare_restore" if point == "at" else "backup_current"],
                         "restore")
        # ... and swapped in once: the live name holds it, the old live database is kept
        # (renamed, the same oid) under the one <db>_corrupted_* name, nothing else is left.
        after = catalog(pg)
        kept = named(after, "corrupted")
        assert after[pg.db] in restored and list(kept.values()) == [before[pg.db]], after
        assert set(after) == {pg.db, *kept}
        swapped = seen["swap_database"]
        if point == "after":  # killed right after the renames: the world already swapped
            assert swapped == after
        else:
            assert swapped[pg.db] == before[pg.db] and not named(swapped, "corrupted")
        assert (runs(markers["stop"]), runs(markers["start"]), runs(markers["migrate"])) == \
            (1, 1, 0)
        assert pg_tables(pg.dsn) == ["alembic_version", "grades", "users"]
        assert pg_count(pg.dsn, "grades") == 40 and pg_revision(pg.dsn) == GOOD_REVISION
        assert pg_tables(pg.dsn, next(iter(kept))) == ["alembic_version", "grades"]
        assert login(pg.ws) == 200
        assert incident_backups(d, "database", w.incident) == 1  # the damaged state, dumped once
        assert_survived(d, smtp, w, PG_RESTORE_STEPS, "PostgreSQL restore + swap")
    finally:
        d.stop()


VERSION_MOVES = """
CREATE TABLE rollbackd_test_version_moves (
    id serial PRIMARY KEY, old text, new text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION rollbackd_test_version_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollbackd_test_version_moves (old, new) VALUES (
        CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.version_num END,
        CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.version_num END);
    RETURN NULL;
END $$;
CREATE TRIGGER rollbackd_test_version_move AFTER INSERT OR UPDATE OR DELETE ON alembic_version
    FOR EACH ROW EXECUTE FUNCTION rollbackd_test_version_move();
"""


def version_moves(app: PgApp) -> list[tuple[str | None, str | None]]:
    with pg_connect(app.dsn) as db:
        return [(r[0], r[1]) for r in db.execute(
            "SELECT old, new FROM rollbackd_test_version_moves ORDER BY id")]


@both_points
def test_postgres_alembic_downgrade_survives_kill9_at_every_step(
        pg: PgApp, smtp: SmtpSink, tmp_path: Path, point: str) -> None:  # noqa: F811
    ws = pg.ws
    with pg_connect(pg.dsn) as db:
        db.execute(VERSION_MOVES.encode())
    d, markers = pg_daemon(pg, smtp, tmp_path, point, DOWNGRADE_STEPS[0],
                           "auto_destructive = true\n")
    v1 = ws.head()
    live = catalog(pg)

    def bad_migration() -> None:
        add_bad_migration(ws, GOOD_REVISION)
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "v2: normalise the password column")
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ws.app_dir,
                       env={**os.environ, **ws.env()}, check=True, capture_output=True,
                       timeout=60)
        ws.restart()

    try:
        ready(d, ws, "database")
        w = walk(d, smtp, point, DOWNGRADE_STEPS, bad_migration)
        # The revision moved twice: up by the bad deploy, down once by the plan.
        assert version_moves(pg) == [(GOOD_REVISION, BAD_REVISION), (BAD_REVISION, GOOD_REVISION)]
        assert pg_revision(pg.dsn) == GOOD_REVISION and login(ws) == 200
        assert ws.head() == v1
        assert (runs(markers["migrate"]), runs(markers["restart"])) == (1, 1)
        assert (runs(markers["stop"]), runs(markers["start"])) == (0, 0)
        assert catalog(pg) == live  # a downgrade makes, renames and drops no database
        assert incident_backups(d, "database", w.incident) == 1  # dumped once, before it all
        wait_healthy(ws)
        assert_survived(d, smtp, w, DOWNGRADE_STEPS, "Alembic downgrade (PostgreSQL)")
    finally:
        d.stop()


# -- Redis sessions -----------------------------------------------------------------------------

REDIS_STEPS = [*CHECKLIST, "restore_sessions", "check_sessions_restored", "verify"]


def restores(r: redis.Redis) -> int:
    """RESTORE commands the server has run, by its own count."""
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_restore", {}).get("calls", 0))


@both_points
def test_redis_sessions_restore_survives_kill9_at_every_step(
        app_on_redis: Workspace, redis_proc: RedisExecutor, redisdb: redis.Redis,  # noqa: F811
        smtp: SmtpSink, tmp_path: Path, point: str) -> None:
    ws = app_on_redis
    tokens = [log_in(ws) for _ in range(SESSIONS)]
    redisdb.set("password_reset:carol", "3", ex=900)
    url_file = tmp_path / "redis-url"
    url_file.write_text(f"redis://{redis_proc.host}:{redis_proc.port}/0\n")
    url_file.chmod(0o600)
    text = ws.config_toml(smtp.port, extra="test_hooks = true", targets_extra=redis_config(
        ws, redis_proc, url_file, "auto_destructive = true\n"))
    d = daemon_for(tmp_path, text, point, REDIS_STEPS[0]).start()
    try:
        ready(d, ws, "sessions")
        ran = restores(redisdb)
        w = walk(d, smtp, point, REDIS_STEPS, redisdb.flushdb)
        # Each of the snapshot's keys was put back by exactly one RESTORE: the step ran once.
        assert restores(redisdb) - ran == SESSIONS + 1
        assert all(me(ws, t) == 200 for t in tokens)
        assert redisdb.get("password_reset:carol") == b"3"
        assert incident_backups(d, "sessions", w.incident) == 1  # the emptied state, once
        assert_survived(d, smtp, w, REDIS_STEPS, "Redis sessions restore")
    finally:
        d.stop()


def test_a_redis_restore_cut_off_halfway_is_held_with_what_was_found(
        app_on_redis: Workspace, redis_proc: RedisExecutor, redisdb: redis.Redis,  # noqa: F811
        smtp: SmtpSink, tmp_path: Path) -> None:
    """The kill comes while restore_sessions runs and half of the snapshot's keys are back (put
    back here while the daemon lies dead, as a kill inside the step's pipeline leaves them):
    the restart finds the effect partial, holds the incident saying how much is back, and on
    approval the step runs once more, putting back only what is missing."""
    ws = app_on_redis
    tokens = [log_in(ws) for _ in range(SESSIONS)]
    keys = sorted(redisdb.keys("session:*"))
    dumps = {k: (redisdb.dump(k), redisdb.pttl(k)) for k in keys}
    url_file = tmp_path / "redis-url"
    url_file.write_text(f"redis://{redis_proc.host}:{redis_proc.port}/0\n")
    url_file.chmod(0o600)
    text = ws.config_toml(smtp.port, extra="test_hooks = true", targets_extra=redis_config(
        ws, redis_proc, url_file, "auto_destructive = true\n"))
    d = daemon_for(tmp_path, text, "at", "restore_sessions").start()
    half = keys[: len(keys) // 2]

    def put_back_half(step: str) -> None:
        for k in half:
            value, ttl = dumps[k]
            redisdb.restore(k, max(ttl, 0), value)

    try:
        ready(d, ws, "sessions")
        ran = restores(redisdb)
        w = walk(d, smtp, "at", ["restore_sessions"], redisdb.flushdb, put_back_half)
        assert w.did == [("restore_sessions", "effect unknown, held, approved")]
        (held,) = journal_rows(d, "SELECT detail FROM timeline WHERE incident_id = ? AND "
                                  "event = 'held'", w.incident)
        assert (f"{len(half)} of {len(keys)} key(s) of snapshot" in held["detail"]
                and "restored in part" in held["detail"]), held["detail"]
        # The half put back here, then one run of the step over every key: those already
        # there are kept (BUSYKEY), the rest restored.
        assert restores(redisdb) - ran == len(half) + len(keys)
        assert all(me(ws, t) == 200 for t in tokens)
        assert_survived(d, smtp, w, REDIS_STEPS, "Redis sessions restore, cut off halfway")
    finally:
        d.stop()


def test_a_swap_cut_off_before_its_renames_is_held_saying_the_app_is_cut_off(
        pg: PgApp, smtp: SmtpSink, tmp_path: Path) -> None:  # noqa: F811
    """The kill comes inside swap_database after it made the live database refuse new sessions
    and before its renames (done here while the daemon lies dead, as such a kill leaves it):
    the restart cannot call that absent, since the app is cut off. Held, effect unknown, saying
    so and how to undo it; approved, the swap runs once and the app is back."""
    d, markers = pg_daemon(pg, smtp, tmp_path, "at", "swap_database",
                           "auto_destructive = true\nrestore_loss_threshold = 100\n")

    def refuse_sessions(step: str) -> None:
        with pg_connect(pg.dsn, "postgres") as db:
            db.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                sql.Identifier(pg.db)))

    try:
        ready(d, pg.ws, "database")
        before = catalog(pg)
        w = walk(d, smtp, "at", ["swap_database"], lambda: drop_users(pg), refuse_sessions)
        assert w.did == [("swap_database", "effect unknown, held, approved")]
        (held,) = journal_rows(d, "SELECT detail FROM timeline WHERE incident_id = ? AND "
                                  "event = 'held'", w.incident)
        assert f"{pg.db} refuses new connections" in held["detail"], held["detail"]
        assert f"ALTER DATABASE {pg.db} WITH ALLOW_CONNECTIONS true" in held["detail"]
        after = catalog(pg)
        assert list(named(after, "corrupted").values()) == [before[pg.db]]
        assert set(after) == {pg.db, *named(after, "corrupted")}
        assert (runs(markers["stop"]), runs(markers["start"])) == (1, 1)
        assert login(pg.ws) == 200 and pg_count(pg.dsn, "grades") == 40
        assert_survived(d, smtp, w, PG_RESTORE_STEPS, "PostgreSQL swap cut off before renames")
    finally:
        d.stop()

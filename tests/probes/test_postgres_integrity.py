"""postgres_integrity against a real PostgreSQL: schema, revision, row counts, amcheck, outages."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError
from pytest_postgresql.executors import PostgreSQLExecutor

from rollbackd.probes.observation import Status, Symptom
from rollbackd.probes.postgres_integrity import PostgresIntegrityProbe, PostgresIntegritySettings

USERS = 2000
KNOWN = ["0001", "0002"]
SECRET = "s3cret-in-the-dsn"
SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, locked_until timestamptz,
                    failed_login_attempts int NOT NULL DEFAULT 0);
CREATE INDEX users_email ON users (email);
CREATE TABLE grades (id serial PRIMARY KEY, user_id int NOT NULL, grade int NOT NULL);
CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0002');
"""
FULL: dict[str, Any] = {"required_tables": ["users", "grades"], "alembic_revisions": KNOWN,
                        "row_counts": {"users": 0.5}, "indexes": ["users_email", "users_pkey"],
                        "create_amcheck": True}


def run(conn: psycopg.Connection, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement.encode())
    conn.commit()


@pytest.fixture
def db(postgresql: psycopg.Connection) -> psycopg.Connection:
    run(postgresql, SCHEMA)
    with postgresql.cursor() as cur:
        cur.executemany("INSERT INTO users (email) VALUES (%s)",
                        [(f"user{i:05d}@example.org",) for i in range(USERS)])
        cur.execute("INSERT INTO grades (user_id, grade) SELECT id, id % 100 FROM users")
    postgresql.commit()
    return postgresql


@pytest.fixture
def dsn_file(tmp_path: Path, postgresql_proc: PostgreSQLExecutor) -> Path:
    path = tmp_path / "dsn"
    # Trust auth: the password is never checked, but must never show either.
    path.write_text(f"host=127.0.0.1 port={postgresql_proc.port} dbname=tests user=postgres "
                    f"password={SECRET}\n")
    return path


def probe_for(dsn_file: Path, **kw: Any) -> PostgresIntegrityProbe:
    kw.setdefault("timeout", 5.0)
    return PostgresIntegrityProbe("pg", PostgresIntegritySettings(dsn_file=dsn_file, **kw))


async def check(probe: PostgresIntegrityProbe) -> Any:
    obs = await probe.check()
    assert SECRET not in obs.detail + repr(obs)
    assert "\n" not in obs.detail
    assert (obs.symptom is None) == obs.ok
    return obs


async def until_ok(probe: PostgresIntegrityProbe, within: float = 10.0) -> Any:
    """The first OK observation; a server just started may still refuse ("starting up")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (obs := await check(probe)).ok and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert obs.ok, obs.detail
    return obs


async def test_healthy_database(db: psycopg.Connection, dsn_file: Path) -> None:
    obs = await check(probe_for(dsn_file, **FULL))
    assert obs.status is Status.OK, obs.detail
    assert (obs.probe, obs.kind, obs.version) == ("pg", "postgres_integrity", "0002")
    assert obs.metrics["rows.users"] == USERS and obs.metrics["indexes_checked"] == 2
    assert obs.metrics["connect_seconds"] > 0
    assert f"rows.users={USERS}" in obs.detail and "2 index(es) pass bt_index_check" in obs.detail


async def test_dropped_table_then_recreated(db: psycopg.Connection, dsn_file: Path) -> None:
    probe = probe_for(dsn_file, **FULL)
    assert (await check(probe)).ok
    run(db, "DROP TABLE grades")
    obs = await check(probe)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.MISSING_TABLE)
    assert obs.detail == "database tests: 1 of 2 required tables are missing (grades)."
    run(db, "CREATE TABLE grades (id serial PRIMARY KEY, user_id int, grade int)")
    assert (await check(probe)).ok


async def test_tables_are_found_on_the_search_path_or_by_schema(
        db: psycopg.Connection, dsn_file: Path) -> None:
    run(db, "CREATE SCHEMA audit", "CREATE TABLE audit.events (id int)",
        "CREATE VIEW active_users AS SELECT * FROM users")
    ok = await check(probe_for(dsn_file, required_tables=["audit.events", "public.users",
                                                          "active_users"]))
    assert ok.ok, ok.detail
    # a bare name is not looked up outside the search_path
    obs = await check(probe_for(dsn_file, required_tables=["events", "audit.users"]))
    assert obs.symptom is Symptom.MISSING_TABLE and "(events, audit.users)" in obs.detail


async def test_truncated_users_table_then_restored(db: psycopg.Connection, dsn_file: Path) -> None:
    probe = probe_for(dsn_file, **FULL)
    assert (await check(probe)).ok
    run(db, "CREATE TABLE users_copy AS SELECT * FROM users", "TRUNCATE users")
    obs = await check(probe)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.ROWS_COLLAPSED)
    assert obs.detail == (f"database tests: rows.users fell from {USERS} to 0 (100% drop, "
                          "limit 50%).")
    assert obs.metrics["rows.users"] == 0
    # still collapsed: the baseline is the last OK observation, not the last one
    assert (await check(probe)).symptom is Symptom.ROWS_COLLAPSED
    run(db, "INSERT INTO users SELECT * FROM users_copy")
    assert (await check(probe)).ok


async def test_a_drop_within_the_limit_moves_the_baseline(db: psycopg.Connection,
                                                          dsn_file: Path) -> None:
    probe = probe_for(dsn_file, row_counts={"users": 0.5})
    assert (await check(probe)).ok
    run(db, f"DELETE FROM users WHERE id > {USERS * 6 // 10}")  # 40% fewer: allowed
    assert (await check(probe)).ok
    run(db, f"DELETE FROM users WHERE id > {USERS * 3 // 10}")  # half of that again: allowed
    assert (await check(probe)).ok
    run(db, "DELETE FROM users WHERE id > 10")
    assert (await check(probe)).symptom is Symptom.ROWS_COLLAPSED


async def test_unknown_revision_then_downgraded(db: psycopg.Connection, dsn_file: Path) -> None:
    probe = probe_for(dsn_file, **FULL)
    run(db, "UPDATE alembic_version SET version_num = 'f00dbad'")
    obs = await check(probe)
    assert (obs.status, obs.symptom, obs.version) == (Status.FAIL, Symptom.BAD_REVISION, "f00dbad")
    assert "revision 'f00dbad' is not one of the 2 known" in obs.detail
    run(db, "UPDATE alembic_version SET version_num = '0001'")
    obs = await check(probe)
    assert obs.ok and obs.version == "0001"


async def test_empty_or_missing_alembic_table(db: psycopg.Connection, dsn_file: Path) -> None:
    probe = probe_for(dsn_file, alembic_revisions=KNOWN)
    run(db, "DELETE FROM alembic_version")
    obs = await check(probe)
    assert obs.symptom is Symptom.BAD_REVISION and "alembic_version is empty" in obs.detail
    run(db, "DROP TABLE alembic_version")
    obs = await check(probe)
    assert obs.symptom is Symptom.BAD_REVISION and "there is no alembic_version" in obs.detail
    # without known revisions nothing is required
    assert (await check(probe_for(dsn_file))).ok


def _leaf_with(path: Path, needle: bytes) -> int:
    """Offset of `needle` in the index file, past the metapage (block 0)."""
    data = path.read_bytes()
    at = data.find(needle, 8192)
    assert at > 0, f"{needle!r} not in {path}"
    return at


async def test_corrupted_index_then_reindexed(db: psycopg.Connection, dsn_file: Path,
                                              postgresql_proc: PostgreSQLExecutor) -> None:
    probe = probe_for(dsn_file, **FULL)
    assert (await check(probe)).metrics["indexes_checked"] == 2
    with db.cursor() as cur:
        cur.execute("SELECT pg_relation_filepath('users_email')")
        row = cur.fetchone()
    assert row is not None
    path = Path(postgresql_proc.datadir) / str(row[0])
    db.close()
    with postgresql_proc.stopped():  # a clean shutdown writes every page; none is cached after
        # An entry in the middle of a leaf page now sorts after its right neighbours.
        at = _leaf_with(path, b"user01000@example.org")
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"zzzz")
    for _ in range(100):  # the server just started may still say "starting up"
        obs = await check(probe)
        if obs.symptom is not Symptom.UNREACHABLE:
            break
        await asyncio.sleep(0.1)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.INTEGRITY), obs.detail
    assert "users_email" in obs.detail and "corruption" in obs.detail
    # The table itself is fine: the damage is only in the index, and REINDEX repairs it.
    with psycopg.connect(dsn_file.read_text(), autocommit=True) as conn:
        conn.execute("REINDEX INDEX users_email")
    obs = await check(probe)
    assert obs.ok and obs.metrics["indexes_checked"] == 2, obs.detail


async def test_without_amcheck_indexes_are_skipped(db: psycopg.Connection, dsn_file: Path) -> None:
    run(db, "DROP EXTENSION IF EXISTS amcheck")
    obs = await check(probe_for(dsn_file, indexes=["users_email"]))
    assert obs.ok and obs.metrics["indexes_checked"] == 0
    assert "index check skipped: the amcheck extension is not installed" in obs.detail
    run(db, "CREATE EXTENSION amcheck")
    obs = await check(probe_for(dsn_file, indexes=["users_email"]))
    assert obs.ok and obs.metrics["indexes_checked"] == 1


async def test_amcheck_needs_the_execute_privilege(db: psycopg.Connection, tmp_path: Path,
                                                   postgresql_proc: PostgreSQLExecutor) -> None:
    run(db, "CREATE EXTENSION amcheck", "CREATE ROLE watcher LOGIN",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO watcher",
        "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
    dsn = tmp_path / "watcher-dsn"
    dsn.write_text(f"postgresql://watcher@127.0.0.1:{postgresql_proc.port}/tests")
    probe = probe_for(dsn, indexes=["users_email"], create_amcheck=True, row_counts={"users": .5})
    obs = await check(probe)
    assert obs.ok and obs.metrics["indexes_checked"] == 0, obs.detail
    assert "cannot create amcheck" not in obs.detail  # IF NOT EXISTS: it is there already
    assert "no EXECUTE privilege on bt_index_check" in obs.detail
    run(db, "DROP OWNED BY watcher", "DROP ROLE watcher")


async def test_missing_index_is_a_missing_schema_object(db: psycopg.Connection,
                                                        dsn_file: Path) -> None:
    run(db, "CREATE EXTENSION amcheck", "DROP INDEX users_email")
    obs = await check(probe_for(dsn_file, indexes=["users_email", "users_pkey"]))
    assert obs.symptom is Symptom.MISSING_TABLE
    assert obs.detail == "database tests: 1 of 2 indexes are missing (users_email)."


async def test_index_check_every_spaces_the_index_checks(db: psycopg.Connection,
                                                         dsn_file: Path) -> None:
    probe = probe_for(dsn_file, indexes=["users_email"], create_amcheck=True,
                      index_check_every="150ms")
    assert (await check(probe)).metrics["indexes_checked"] == 1
    assert (await check(probe)).metrics["indexes_checked"] == 0
    await asyncio.sleep(0.2)
    assert (await check(probe)).metrics["indexes_checked"] == 1


async def test_server_stopped_then_started(db: psycopg.Connection, dsn_file: Path,
                                           postgresql_proc: PostgreSQLExecutor) -> None:
    probe = probe_for(dsn_file, **FULL)
    assert (await check(probe)).ok
    db.close()
    with postgresql_proc.stopped():
        obs = await check(probe)
        assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE)
        assert obs.detail.startswith("cannot connect to database tests: ")
        assert "refused" in obs.detail.lower()
    await until_ok(probe)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        stop = threading.Event()
        accepted: list[socket.socket] = []

        def accept() -> None:
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(sock.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield sock.getsockname()[1]
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()


async def test_hung_server_times_out_within_the_probe_timeout(tmp_path: Path,
                                                               silent_port: int) -> None:
    dsn = tmp_path / "dsn"
    dsn.write_text(f"postgresql://postgres:{SECRET}@127.0.0.1:{silent_port}/tests")
    loop = asyncio.get_running_loop()
    started = loop.time()
    obs = await check(probe_for(dsn, timeout=0.5))
    assert loop.time() - started < 1.5
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.TIMEOUT)
    assert obs.detail == "database tests gave no answer within 0.5s."


async def test_slow_query_ends_on_the_server_too(db: psycopg.Connection, dsn_file: Path) -> None:
    """A table locked by a migration: the probe times out, and leaves nothing waiting behind."""
    db.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # held until commit
    obs = await check(probe_for(dsn_file, timeout=1.0, row_counts={"users": 0.5}))
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.TIMEOUT), obs.detail
    db.commit()
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'rollbackd-probe'")
        assert cur.fetchone() == (0,)


async def test_missing_database(dsn_file: Path, postgresql_proc: PostgreSQLExecutor) -> None:
    dsn_file.write_text(f"host=127.0.0.1 port={postgresql_proc.port} dbname=nosuchdb "
                        f"user=postgres password={SECRET}")
    obs = await check(probe_for(dsn_file))
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.INTEGRITY)
    assert obs.detail == "database nosuchdb does not exist."


async def test_unknown_role_is_a_probe_error(dsn_file: Path,
                                             postgresql_proc: PostgreSQLExecutor) -> None:
    dsn_file.write_text(f"postgresql://nobody:{SECRET}@127.0.0.1:{postgresql_proc.port}/tests")
    obs = await check(probe_for(dsn_file))
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "refused the probe's login" in obs.detail


@pytest.mark.parametrize("content", [
    pytest.param(f"host=127.0.0.1 password {SECRET}", id="malformed"),
    pytest.param(f"postgresql://u:{SECRET}@127.0.0.1:5432/db?nosuchoption=1", id="bad-option"),
])
async def test_bad_dsn_never_shows_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "dsn"
    path.write_text(content)
    obs = await check(probe_for(path))
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert obs.detail == f"the DSN file {str(path)!r} does not hold a valid libpq connection string."


async def test_unreadable_dsn_file(tmp_path: Path) -> None:
    obs = await check(probe_for(tmp_path / "absent"))
    assert obs.status is Status.ERROR and "cannot read the DSN file" in obs.detail


async def test_dsn_file_is_read_at_each_check(db: psycopg.Connection, dsn_file: Path,
                                              postgresql_proc: PostgreSQLExecutor) -> None:
    good = dsn_file.read_text()
    probe = probe_for(dsn_file)
    assert (await check(probe)).ok
    dsn_file.write_text(good.replace(f"port={postgresql_proc.port}", "port=1"))
    assert (await check(probe)).symptom is Symptom.UNREACHABLE
    dsn_file.write_text(good)
    assert (await check(probe)).ok


def test_settings_need_an_absolute_dsn_file() -> None:
    with pytest.raises(ValidationError, match="must be an absolute path"):
        PostgresIntegritySettings(dsn_file=Path("relative/dsn"))
    with pytest.raises(ValidationError):
        PostgresIntegritySettings(dsn_file=Path("/dsn"), row_counts={"users": 1.5})


def test_settings_never_hold_the_dsn_itself() -> None:
    settings = PostgresIntegritySettings(dsn_file=Path("/run/credentials/dsn"))
    assert "dsn" not in {k for k in settings.model_dump() if k != "dsn_file"}
    assert os.fspath(settings.dsn_file) == "/run/credentials/dsn"


def test_registered_with_every_setting_documented() -> None:
    from rollbackd.probes.registry import PROBE_KINDS, build_probe, probe_class
    from tests.probes.test_registry import _documented_fields

    model, cls = PROBE_KINDS["postgres_integrity"].settings, probe_class("postgres_integrity")
    assert (model, cls) == (PostgresIntegritySettings, PostgresIntegrityProbe)
    fields = _documented_fields(model)
    assert [name for name, doc in fields.items() if not doc and name != "kind"] == []
    assert isinstance(build_probe("pg", model(kind="postgres_integrity", dsn_file="/run/dsn")),
                      PostgresIntegrityProbe)

"""The dump restore in sections (rollbackd/daemon/rollback/pg_load.py) against the real PostgreSQL: it makes
the same database as one `pg_restore -j` run (schema, ownership, privileges, sequences, large
objects, data), with a large table split over several COPY streams and the privileges applied
last; any stream's error fails the step in one line and leaves the live database as it was; the
row counts it verifies with are exact."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

from rollbackd.daemon.backup.pg import figures
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback import pg_load
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.data_settings import PostgresDatabase
from rollbackd.daemon.rollback.pg_copytext import END, CopyTextError, RowChunks, parse_header
from rollbackd.daemon.rollback.pg_toc import sections
from rollbackd.daemon.rollback.postgres_restore import PostgresExecutor, restored_name
from tests.recovery.pg_support import admin, databases

ROWS = 30_000  # of the big table: ~3 MB of COPY text, split when SPLIT_AT is 256 KiB


def tool_env(proc: PostgreSQLExecutor, user: str | None = None) -> dict[str, str]:
    return {**os.environ, "PGHOST": proc.host, "PGPORT": str(proc.port),
            "PGUSER": user or proc.user}


def dump(proc: PostgreSQLExecutor, db: str, *opts: str) -> str:
    """pg_dump's plain output, without the \\restrict lines (a random key each run)."""
    out = subprocess.run(["pg_dump", *opts, db], env=tool_env(proc), check=True,
                         capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict",
                                                                         "\\unrestrict")))


def one(proc: PostgreSQLExecutor, db: str, query: str) -> Any:
    with admin(proc, db) as c:
        row = c.execute(query).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


@pytest.fixture
def roles(postgresql_proc: PostgreSQLExecutor) -> Iterator[tuple[str, str]]:
    """An owner that can log in and create databases (not a superuser), and a reader."""
    tag = uuid.uuid4().hex[:8]
    owner, reader = f"owner_{tag}", f"reader_{tag}"
    with admin(postgresql_proc) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(owner)))
        c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
    yield owner, reader
    with admin(postgresql_proc) as c:
        for db in databases(postgresql_proc, "fast") + databases(postgresql_proc, "same_"):
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))
        for role in (reader, owner):
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# Everything pg_dump dumps that a restore in sections must put back exactly: odd names, types,
# identity and generated columns, inheritance, partitions, an unlogged and an empty table, views,
# a materialized view, sequences, triggers, RLS, comments, grants, a REVOKE from the owner (which
# would refuse the owner's own COPY if applied before the data), default privileges, and a
# large object; rows with tabs, newlines, backslashes and a lone `\.` value.
SCHEMA = """
CREATE SCHEMA "Odd Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.updated := now(); RETURN NEW; END$$;
CREATE FUNCTION refuse(id bigint) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$BEGIN
  IF id = 777 AND current_database() LIKE '%\\_restore\\_%' THEN
    RAISE EXCEPTION 'row 777 refused in %', current_database();
  END IF;
  RETURN true; END$$;
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, mood mood, n posint);
CREATE TABLE "Odd Schema"."we;ird ""t"" FROM stdin;
 x" (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Col A" text,
     doubled int GENERATED ALWAYS AS (id * 2) STORED);
CREATE TABLE big (id bigint PRIMARY KEY, user_id int REFERENCES users, payload text,
                  updated timestamptz);
CREATE INDEX big_lower ON big (lower(payload)) WHERE id % 2 = 0;
CREATE TRIGGER big_bump BEFORE UPDATE ON big FOR EACH ROW EXECUTE FUNCTION bump();
CREATE TABLE parent (id int, k text);
CREATE TABLE child (extra int) INHERITS (parent);
CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE UNLOGGED TABLE scratch (v text);
CREATE TABLE empty_t (v text);
CREATE VIEW v_users AS SELECT id, email FROM users;
CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n, sum(id) AS s FROM big;
CREATE SEQUENCE counter START 100;
SELECT setval('counter', 4242);
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON users USING (true);
COMMENT ON TABLE big IS 'the big one';
COMMENT ON COLUMN users.email IS 'login';
INSERT INTO users (email, mood, n) SELECT 'u' || g || '@x', 'ok', g FROM generate_series(1, 50) g;
INSERT INTO big SELECT g, 1 + g % 50,
  CASE WHEN g % 1000 = 0 THEN E'\\\\.' ELSE 'row ' || g || E'\\tt\\nn\\\\b ' || repeat('x', g % 90)
  END, '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, {rows}) g;
INSERT INTO "Odd Schema"."we;ird ""t"" FROM stdin;
 x" ("Col A") VALUES ('a'), (E'\\\\.'), (E'b\\nc');
INSERT INTO parent VALUES (1, 'p');
INSERT INTO child VALUES (2, 'c', 3);
INSERT INTO events VALUES (1, '2024-05-01'), (2, '2025-05-01'), (3, '2025-06-01');
INSERT INTO scratch VALUES ('s');
REFRESH MATERIALIZED VIEW mv;
SELECT lo_from_bytea(0, 'a large object');
"""

GRANTS = """
GRANT USAGE ON SCHEMA "Odd Schema" TO {reader};
GRANT SELECT ON users, big TO {reader};
GRANT SELECT (id, email) ON v_users TO {reader};
REVOKE INSERT ON big FROM {owner};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {reader};
"""


def make_app(proc: PostgreSQLExecutor, name: str, owner: str, reader: str,
             rows: int = ROWS, refuse: str = "") -> None:
    """The app's database, every object made by (so owned by) `owner`."""
    with admin(proc) as c:
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(owner)))
    with admin(proc, name, owner) as c:
        c.execute(SCHEMA.format(rows=rows))  # type: ignore[arg-type]
        if refuse:
            c.execute(f"ALTER TABLE {refuse} ADD CHECK (refuse(id))")  # type: ignore[arg-type]
        c.execute(GRANTS.format(owner=f'"{owner}"', reader=f'"{reader}"'))  # type: ignore[arg-type]


def pg_settings(proc: PostgreSQLExecutor, db: str, user: str, tmp: Path, **kw: Any
                ) -> PostgresDatabase:
    dsn = tmp / "dsn"
    dsn.write_text(f"postgresql://{user}@{proc.host}:{proc.port}/{db}\n")
    values: dict[str, Any] = {"kind": "postgres", "dsn_file": str(dsn), "jobs": 2,
                              "tables": ["users", "big", "parent", "child", "events",
                                         "events_2024", "empty_t"]}
    values.update(kw)
    return PostgresDatabase(**values)


@pytest.fixture
def split_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split any table over 256 KiB of rows, in 64 KiB chunks: the big table's ~3 MB go over
    both streams in many chunks, the others in one COPY FREEZE each."""
    monkeypatch.setattr(pg_load, "SPLIT_AT", 256 << 10)
    monkeypatch.setattr(pg_load, "CHUNK", 64 << 10)


def test_a_restore_in_sections_makes_the_same_database_as_pg_restore(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str], store: BackupStore,
        tmp_path: Path, split_small: None) -> None:
    """As a non-superuser owner, so that privileges applied too early would fail the COPY."""
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader)
    ex = PostgresExecutor(pg_settings(postgresql_proc, app, owner, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    assert b.verified, b.verify_error

    # The reference: one pg_restore -j 2 run into an empty database of the same owner.
    reference = f"same_{uuid.uuid4().hex[:8]}"
    with admin(postgresql_proc) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {}").format(
            sql.Identifier(reference), sql.Identifier(owner)))
    subprocess.run(["pg_restore", "-j", "2", "--exit-on-error", "-d", reference, str(b.path)],
                   env=tool_env(postgresql_proc, owner), check=True, capture_output=True)

    detail = asyncio.run(ex.prepare(b))
    ours = restored_name(app, b.id)
    assert "in sections" in detail and "1 split over 2 streams" in detail, detail
    assert "tables and row counts match" in detail
    assert set(ex.phase_seconds) == {"create", "pre-data", "data", "post-data", "verify"}

    # Schema, ownership, privileges, default privileges, comments, policies: identical.
    assert dump(postgresql_proc, ours, "--schema-only") == \
        dump(postgresql_proc, reference, "--schema-only")
    # Data: every table loaded by one stream keeps the dump's order, so the data-only dumps
    # (with the sequences' values and the large object) are identical; the split table holds
    # the same rows.
    assert dump(postgresql_proc, ours, "--data-only", "--exclude-table-data=big") == \
        dump(postgresql_proc, reference, "--data-only", "--exclude-table-data=big")
    rows_of = "SELECT md5(string_agg(b::text, E'\\n' ORDER BY id)) FROM big b"
    assert one(postgresql_proc, ours, rows_of) == one(postgresql_proc, reference, rows_of)
    assert one(postgresql_proc, ours, "SELECT n FROM mv") == ROWS
    assert one(postgresql_proc, ours, "SELECT last_value FROM counter") == 4242
    # The tables loaded by one COPY were written frozen; the split one was not.
    with admin(postgresql_proc, ours) as c:
        c.execute("CREATE EXTENSION pg_visibility")
        frozen = {t: c.execute("SELECT all_frozen FROM pg_visibility_map_summary(%s)",
                               (t,)).fetchone() for t in ("users", "child", "big")}
    assert frozen["users"] == (1,) and frozen["child"] == (1,)
    assert frozen["big"] == (0,)


def test_the_verification_takes_the_copy_counts_only_where_they_are_the_tables_rows(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str]) -> None:
    """A plain table's COPY count is its count(*); an inheritance parent's count(*) includes its
    children's rows and a partition's rows may come through its parent: those are counted."""
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader, rows=10)
    with admin(postgresql_proc, app) as c:
        oids = {t: int(c.execute("SELECT %s::regclass::oid::int8", (t,)).fetchone()[0])  # type: ignore[index]
                for t in ("users", "parent", "events", "events_2024")}

    async def count(copied: dict[int, int]) -> dict[str, int]:
        conn = await psycopg.AsyncConnection.connect(
            host=postgresql_proc.host, port=postgresql_proc.port, user=postgresql_proc.user,
            dbname=app, autocommit=True)
        async with conn:
            found = await figures(conn, ["users", "parent", "events", "events_2024"],
                                  "alembic_version", True, copied)
        return {t: f["rows"] for t, f in found["tables"].items()}

    told = {oid: 1000 + n for n, oid in enumerate(oids.values())}
    assert asyncio.run(count(told)) == {"users": told[oids["users"]], "parent": 2,
                                        "events": 3, "events_2024": 1}
    assert asyncio.run(count({})) == {"users": 50, "parent": 2, "events": 3, "events_2024": 1}


@pytest.mark.parametrize("table", ["big", "users"])
def test_an_error_in_any_stream_fails_in_one_line_and_the_live_database_stays(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str], store: BackupStore,
        tmp_path: Path, split_small: None, table: str) -> None:
    """A row the restored database refuses (a CHECK whose function refuses row 777 in a
    database named *_restore_*): in one of the split table's streams, or in a table's only
    COPY FREEZE."""
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader, refuse=table,
             rows=ROWS if table == "big" else 1000)
    if table == "users":
        with admin(postgresql_proc, app, owner) as c:
            c.execute("INSERT INTO users (id, email, n) VALUES (777, 'late@x', 1)")
    ex = PostgresExecutor(pg_settings(postgresql_proc, app, owner, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    before = dump(postgresql_proc, app)

    with pytest.raises(StepFailed) as failed:
        asyncio.run(ex.prepare(b))
    why = str(failed.value)
    assert "\n" not in why
    assert why.startswith(f"pg_restore into {restored_name(app, b.id)} failed: COPY failed for "
                          f"table public.{table}: row 777 refused in "), why
    assert why.endswith("; the current database is untouched")
    assert databases(postgresql_proc, restored_name(app, b.id)) == []  # the new one dropped
    assert dump(postgresql_proc, app) == before
    assert not our_pg_restores()


def test_a_dump_whose_rows_cannot_be_read_fails_in_one_line(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str], store: BackupStore,
        tmp_path: Path, split_small: None) -> None:
    """pg_restore itself failing while it decodes a table's rows (the archive ends in them)."""
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader)
    ex = PostgresExecutor(pg_settings(postgresql_proc, app, owner, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    with open(b.path, "r+b") as fh:  # the table of contents stays, the big table's rows end
        fh.truncate(b.size // 2)
    with pytest.raises(StepFailed) as failed:
        asyncio.run(ex.prepare(b))  # (a restore step would refuse it: its checksum changed)
    why = str(failed.value)
    assert "\n" not in why
    # Whichever table's decoding fails first: big's rows end, those stored after it are gone.
    assert why.startswith(f"pg_restore into {restored_name(app, b.id)} failed: COPY failed for "
                          "table "), why
    assert "pg_restore exited 1: pg_restore: error: " in why
    assert why.endswith("; the current database is untouched")
    assert databases(postgresql_proc, restored_name(app, b.id)) == []
    assert not our_pg_restores()


def our_pg_restores() -> list[int]:
    """pg_restore processes this test process started that are still running."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if comm == "pg_restore" and int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(pid))
    return found


def test_a_cancelled_restore_stops_every_stream_and_drops_the_new_database(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str], store: BackupStore,
        tmp_path: Path, split_small: None) -> None:
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader)
    with admin(postgresql_proc, app, owner) as c:  # each row takes a while, in restores only
        c.execute("CREATE FUNCTION slow(id bigint) RETURNS boolean LANGUAGE plpgsql IMMUTABLE "
                  "AS $$BEGIN IF current_database() LIKE '%\\_restore\\_%' THEN "
                  "PERFORM pg_sleep(0.0005); END IF; RETURN true; END$$")
        c.execute("ALTER TABLE big ADD CHECK (slow(id))")
    ex = PostgresExecutor(pg_settings(postgresql_proc, app, owner, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    target = restored_name(app, b.id)

    async def cancel_midway() -> None:
        task = asyncio.create_task(ex.prepare(b))
        streams: set[int] = set()  # backends that ran the big table's COPY
        for _ in range(200):
            await asyncio.sleep(0.05)
            if task.done():
                raise AssertionError(f"the restore ended before it was cancelled: "
                                     f"{task.result()!r}")
            with admin(postgresql_proc) as c:
                now = c.execute("SELECT pid, state FROM pg_stat_activity WHERE datname = %s "
                                "AND query LIKE 'COPY public.big %%'", (target,)).fetchall()
            streams |= {int(pid) for pid, _ in now}
            # Both streams ran (one may be through its share) and one is still at it.
            if len(streams) == 2 and any(state == "active" for _, state in now):
                break
        else:
            raise AssertionError("the big table was never loaded by two streams")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert databases(postgresql_proc, target) == []
    assert not our_pg_restores()


def test_the_previous_method_is_still_there(
        postgresql_proc: PostgreSQLExecutor, roles: tuple[str, str], store: BackupStore,
        tmp_path: Path) -> None:
    owner, reader = roles
    app = f"fast{uuid.uuid4().hex[:8]}"
    make_app(postgresql_proc, app, owner, reader, rows=100)
    ex = PostgresExecutor(pg_settings(postgresql_proc, app, owner, tmp_path,
                                      restore_method="pg_restore"))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    detail = asyncio.run(ex.prepare(b))
    assert f"pg_restore -j 2 of {b.path.name}" in detail
    assert set(ex.phase_seconds) == {"create", "pg_restore", "verify"}


# -- without a server: the COPY text and the table of contents ----------------------------------

def test_the_copy_header_is_parsed_with_quoted_names_that_hold_anything() -> None:
    preamble = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict k3y\n\n"
                b"SET client_encoding = 'UTF8';\n"
                b"SELECT pg_catalog.set_config('search_path', '', false);\n\n-- Data for x\n\n")
    copy = b'COPY "Odd Schema"."we;ird ""t"" FROM stdin;\n x" (id, "Col A") FROM stdin;\n'
    assert parse_header(preamble + copy[:30]) is None  # not all read yet
    header, start = parse_header(preamble + copy + b"1\ta\n")  # type: ignore[misc]
    assert start == len(preamble + copy)
    assert header.settings == ("SET client_encoding = 'UTF8';",
                               "SELECT pg_catalog.set_config('search_path', '', false);")
    assert header.table == '"Odd Schema"."we;ird ""t"" FROM stdin;\n x"'
    assert header.statement == copy.decode()[:-2]
    with pytest.raises(CopyTextError):
        parse_header(b"-- nothing\n" * 200_000)


def test_rows_are_cut_at_line_ends_and_end_at_the_end_of_data_line() -> None:
    rng = random.Random(7)
    trailer = b"\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k3y\n\n"
    for _ in range(150):
        rows = b"".join(b"%d\t%s\\\\.\\n\n" % (i, b"x" * rng.choice((0, 5, 300, 150_000)))
                        for i in range(rng.randrange(0, 2000)))
        stream = rows + END + trailer
        size = rng.choice((1, 1000, 100_000, 1 << 20))
        longest = max((len(r) + 1 for r in rows.split(b"\n")), default=0)
        chunks = RowChunks(size)
        out, at = [], 0
        while at < len(stream):
            n = rng.choice((1, 7, 4096, 65536, 1 << 20))
            for chunk in chunks.feed(stream[at:at + n]):
                data = b"".join(chunk)
                assert data.endswith(b"\n")
                assert len(data) <= size + longest  # about `size`: more only for a long row
                out.append(data)
            at += n
        out.append(b"".join(chunks.end()))
        assert b"".join(out) == rows
    broken = RowChunks(10)
    broken.feed(b"1\n2\n")
    with pytest.raises(CopyTextError, match="end-of-data"):
        broken.end()


def test_privileges_go_last_and_only_created_tables_count_as_empty() -> None:
    full = """;
; Archive created at 2026-01-01
214; 1259 16780 TABLE public t ownr
3356; 0 0 COMMENT public TABLE t ownr
3358; 0 0 ACL public TABLE t ownr
3348; 2613 16793 BLOB - 16793 postgres
3346; 0 16780 TABLE DATA public t ownr
3347; 0 16999 TABLE DATA public ext_config ownr
3349; 0 0 BLOBS - BLOBS
3350; 0 0 SEQUENCE SET public s ownr
3202; 2606 16786 CONSTRAINT public t t_pkey ownr
2038; 826 16779 DEFAULT ACL - DEFAULT PRIVILEGES FOR TABLES ownr
3360; 0 0 ACL - LARGE OBJECT 16793 postgres
"""
    lines = full.splitlines()
    pre = "\n".join(lines[2:4] + lines[5:6])
    data = "\n".join(lines[6:10])
    post = "\n".join(lines[10:11])
    plan = sections(full, pre, data, post)
    assert plan.pre == [lines[2], lines[3], lines[5]]
    assert [(td.entry.line, td.created) for td in plan.table_data] == [
        (lines[6], True), (lines[7], False)]  # ext_config: made by its extension, not here
    assert plan.other_data == [lines[8], lines[9]]
    assert plan.post == [lines[10], lines[4], lines[11], lines[12]]  # the ACLs in archive order

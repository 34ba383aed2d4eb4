"""Benchmark (not a test): PostgreSQL restore on a ~1 GiB pgbench database, beside its floors.

    .venv/bin/python bench/recovery_pg.py                # pgbench scale 70 (~1 GiB)
    .venv/bin/python bench/recovery_pg.py --scale 10     # quicker, ~150 MiB

It starts a throwaway PostgreSQL of its own (initdb in a temporary directory, 127.0.0.1 on a free
port, as the postgres user when run as root, exactly like the test fixture), fills a database
with `pgbench -i -s SCALE`, and times in one run:

- the runbook: drop the damaged database, create it, `psql -f` a plain SQL dump;
- rollbackd from its pg_dump -Fc -Z 0 backup: pg_restore -j into a NEW database, verify it (tables,
  exact row counts, alembic revision), swap names (the damaged one kept as <db>_corrupted_<time>);
- rollbackd from a snapshot database: CREATE DATABASE ... TEMPLATE snapshot (STRATEGY FILE_COPY),
  verify, swap; beside the floors CREATE DATABASE ... TEMPLATE with FILE_COPY and with WAL_LOG;
- the rename swap alone.

Goals: snapshot restore >= 50x faster than the runbook; dump restore >= 1.2x faster than it.
Exits 1 when a goal is missed. The server is stopped by its own pg_ctl at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from pytest_postgresql.executors import PostgreSQLExecutor  # noqa: E402

from daemon.backup.store import BackupStore  # noqa: E402
from daemon.journal.store import Journal  # noqa: E402
from daemon.rollback.data_settings import PostgresDatabase  # noqa: E402
from daemon.rollback.postgres_restore import PostgresExecutor  # noqa: E402
from tests.infra.fixtures import _pg_ctl_for_this_user  # noqa: E402
from tests.infra.services import free_port  # noqa: E402

SNAPSHOT_GOAL = 50.0
DUMP_GOAL = 1.2
DB = "bench"


def sql(ex: PostgreSQLExecutor, q: str, db: str = "postgres") -> Any:
    with psycopg.connect(host=ex.host, port=ex.port, user=ex.user, dbname=db,
                         autocommit=True) as c:
        cur = c.execute(q)
        return cur.fetchall() if cur.description else None


def run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rollbackd-bench-pg-", dir=a.dir))
    cluster = base / "cluster"
    cluster.mkdir(mode=0o700)
    pg: PostgreSQLExecutor | None = None
    try:
        pg = PostgreSQLExecutor(
            executable=_pg_ctl_for_this_user(base, cluster), host="127.0.0.1",
            port=free_port(), datadir=str(cluster / "data"), unixsocketdir=str(cluster),
            logfile=str(cluster / "postgresql.log"), startparams="-w", dbname="postgres",
            user="postgres", postgres_options="-c listen_addresses=127.0.0.1")
        pg.start()
        pg.wait_for_postgres()
        return bench(pg, base, a.scale, a.jobs)
    finally:
        if pg is not None and pg.running():
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def bench(pg: PostgreSQLExecutor, base: Path, scale: int, jobs: int) -> int:
    import os

    env = {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user}
    work = base / "work"
    work.mkdir()
    sql(pg, f"CREATE DATABASE {DB}")
    print(f"pgbench -i -s {scale} ...", flush=True)
    t_init = timed(lambda: run(["pgbench", "-i", "-q", "-s", str(scale), DB], env))
    sql(pg, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
            "INSERT INTO alembic_version VALUES ('0002')", DB)
    sql(pg, "VACUUM ANALYZE", DB)
    size = sql(pg, f"SELECT pg_database_size('{DB}')")[0][0]
    print(f"database {DB}: {size / 2**30:.2f} GiB, built in {t_init:.0f}s", flush=True)

    # The runbook's plain dump, and rollbackd's backup (snapshot clone + pg_dump -Fc -Z 0 of it).
    plain = work / "plain.sql"
    t_plain_dump = timed(lambda: run(["pg_dump", "-Fp", "-f", str(plain), DB], env))
    journal = Journal(base / "state" / "journal.sqlite3")
    store = BackupStore(journal, base / "state" / "backups", "bench")
    dsn = work / "dsn"
    dsn.write_text(f"postgresql://{pg.user}@{pg.host}:{pg.port}/{DB}\n")
    settings = PostgresDatabase(kind="postgres", dsn_file=str(dsn), jobs=jobs,  # type: ignore[arg-type]
                                snapshot=True, tables=[])
    ex = PostgresExecutor(settings)
    ex.attach(store)
    t0 = time.perf_counter()
    b = asyncio.run(store.take(ex.backuper))
    t_backup = time.perf_counter() - t0
    assert b.verified, b.verify_error
    assert b.versions.get("snapshot_db"), "the snapshot was not taken"
    print(f"backups: plain SQL dump {t_plain_dump:.1f}s; rollbackd snapshot + -Fc -Z 0 dump "
          f"+ sha256 + pg_restore --list {t_backup:.1f}s ({b.size / 2**20:.0f} MiB)", flush=True)

    # Floors: template clones with each strategy, the rename swap alone.
    snap = str(b.versions["snapshot_db"])
    floors = {}
    for strategy in ("file_copy", "wal_log"):
        floors[strategy] = timed(lambda s=strategy: sql(  # type: ignore[misc]
            pg, f"CREATE DATABASE floor_{s} TEMPLATE \"{snap}\" STRATEGY {s.upper()}"))
        sql(pg, f"DROP DATABASE floor_{strategy}")
    sql(pg, "CREATE DATABASE swap_a")
    sql(pg, "CREATE DATABASE swap_b")

    def rename_pair() -> None:
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, dbname="postgres") as c:
            c.execute("ALTER DATABASE swap_a RENAME TO swap_c")
            c.execute("ALTER DATABASE swap_b RENAME TO swap_a")
            c.commit()

    floors["rename"] = timed(rename_pair)
    sql(pg, "DROP DATABASE swap_a")
    sql(pg, "DROP DATABASE swap_c")

    # The runbook: drop the damaged database, create it, psql the plain dump.
    sql(pg, f"CREATE DATABASE runbook TEMPLATE \"{snap}\" STRATEGY FILE_COPY")  # the damaged copy

    def runbook() -> None:
        sql(pg, "DROP DATABASE runbook")
        sql(pg, "CREATE DATABASE runbook")
        run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-f", str(plain), "runbook"], env)

    t_runbook = timed(runbook)
    sql(pg, "DROP DATABASE runbook")

    def restore(backup: Any) -> tuple[float, float, str]:
        sql(pg, "DROP TABLE pgbench_history", DB)  # the damage
        t = time.perf_counter()
        asyncio.run(ex.prepare(backup))
        kept, _, swap = asyncio.run(ex.swap(backup.id))
        total = time.perf_counter() - t
        problem = asyncio.run(ex._verify_db(DB, dict(backup.versions)))
        assert problem is None, problem
        sql(pg, f'DROP DATABASE "{kept}"')  # only to free the disk for the next method
        return total, swap, kept

    t_snap, swap_snap, _ = restore(b)
    t_dump, swap_dump, kept = restore(replace(b, versions={
        k: v for k, v in b.versions.items() if k != "snapshot_db"}))
    journal.close()

    rows = [
        ("runbook: drop + create + psql plain dump", t_runbook, "", ""),
        ("rollbackd: snapshot db renamed in + check + swap", t_snap,
         f"FILE_COPY {floors['file_copy']:.2f}s / WAL_LOG {floors['wal_log']:.2f}s",
         f"{t_runbook / t_snap:.1f}x (goal >= {SNAPSHOT_GOAL:g}x)"),
        (f"rollbackd: pg_restore -j {jobs} new db + verify + swap", t_dump, "runbook",
         f"{t_runbook / t_dump:.2f}x (goal >= {DUMP_GOAL:g}x)"),
        ("rename swap (terminate + 2 renames)", swap_dump,
         f"{floors['rename'] * 1000:.0f} ms", f"snapshot path {swap_snap * 1000:.0f} ms"),
    ]
    print(f"\nPostgreSQL restore, {size / 2**30:.2f} GiB (pgbench -s {scale}), "
          f"the old database kept (e.g. {kept})")
    print(f"{'method':<56} {'seconds':>8}  {'floor':<34} speed-up vs runbook")
    for name, sec, floor, ratio in rows:
        print(f"{name:<56} {sec:>8.2f}  {floor:<34} {ratio}")
    ok = t_runbook / t_snap >= SNAPSHOT_GOAL and t_runbook / t_dump >= DUMP_GOAL
    print("goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

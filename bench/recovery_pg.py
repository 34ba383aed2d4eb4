"""Benchmark (not a test): PostgreSQL restore on a ~1 GiB pgbench database, beside its floors.

    .venv/bin/python bench/recovery_pg.py                # pgbench scale 70 (~1 GiB)
    .venv/bin/python bench/recovery_pg.py --scale 10     # quicker, ~150 MiB

It starts a throwaway PostgreSQL of its own (initdb in a temporary directory, 127.0.0.1 on a free
port, as the postgres user when run as root, exactly like the test fixture), fills a database
with `pgbench -i -s SCALE`, and times in one run:

- the runbook: drop the damaged database, create it, `psql -f` a plain SQL dump (psql's \\timing
  splits it into schema, table data and indexes);
- rollbackd from its pg_dump -Fc -Z 0 backup into a NEW database, verified (tables, exact row
  counts, alembic revision), then swapped in by name (the damaged one kept as
  <db>_corrupted_<time>), by each restore_method: "sections" (the default: pg_restore of the
  schema, the table data on rollbackd's own COPY streams, pg_restore -j of the indexes; the row
  counts are the COPY counts) and "pg_restore" (one pg_restore -j run, then count(*));
- rollbackd from a snapshot database: CREATE DATABASE ... TEMPLATE snapshot (STRATEGY FILE_COPY),
  verify, swap; beside the floors CREATE DATABASE ... TEMPLATE with FILE_COPY and with WAL_LOG;
- the rename swap alone.

Goals: snapshot restore >= 50x faster than the runbook; dump restore (the default method) >= 1.2x
faster than it. Exits 1 when a goal is missed. Every timed restore starts right after a CHECKPOINT,
so none pays for the dirty pages and WAL of the one before it; the server's settings are the same
for all. The server is stopped by its own pg_ctl at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from rollbackd.daemon.backup.store import BackupStore  # noqa: E402
from rollbackd.daemon.journal.store import Journal  # noqa: E402
from rollbackd.daemon.rollback.data_settings import PostgresDatabase  # noqa: E402
from rollbackd.daemon.rollback.postgres_restore import PostgresExecutor  # noqa: E402
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


def psql_phases(out: str) -> dict[str, float]:
    """Seconds of schema, table data and indexes in `psql -e` output with \\timing on: each
    "Time:" line is the statement echoed first since the previous one. Before the first COPY is
    the schema; the COPYs and the sequence values after them are the data; the rest is the
    indexes, constraints and privileges."""
    timed_stmts: list[tuple[str, float]] = []
    first = ""
    for line in out.splitlines():
        if line.startswith("Time: "):
            timed_stmts.append((first, float(line.split()[1]) / 1000))
            first = ""
        elif not first and line.strip():
            first = line.strip()
    copies = [i for i, (q, _) in enumerate(timed_stmts) if q.startswith("COPY ")]
    phases = {"pre-data": 0.0, "data": 0.0, "post-data": 0.0}
    for i, (q, sec) in enumerate(timed_stmts):
        if not copies or i < copies[0]:
            phases["pre-data"] += sec
        elif i <= copies[-1] or q.startswith("SELECT pg_catalog.setval"):
            phases["data"] += sec
        else:
            phases["post-data"] += sec
    return phases


PHASES = [
    ("drop", "drop the damaged database"),
    ("create", "create the new database"),
    ("pre-data", "schema (pre-data)"),
    ("data", "table data (COPY)"),
    ("post-data", "indexes, constraints, privileges"),
    ("pg_restore", "pre-data + data + post-data in one pg_restore"),
    ("verify", "verify: tables, exact rows, revision"),
    ("swap", "swap (terminate + 2 renames)"),
    ("other", "the rest (client, connections)"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--streams", type=int, default=2, help="copy_streams of the sections method")
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
        return bench(pg, base, a.scale, a.jobs, a.streams)
    finally:
        if pg is not None and pg.running():
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def bench(pg: PostgreSQLExecutor, base: Path, scale: int, jobs: int, streams: int) -> int:
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
                                snapshot=True, tables=[], copy_streams=streams)
    ex = PostgresExecutor(settings)
    ex.attach(store)
    # The same backup restored by the previous method, for comparison.
    old = PostgresExecutor(settings.model_copy(update={"restore_method": "pg_restore"}))
    old.attach(store)
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

    def runbook() -> dict[str, float]:
        phases = {"drop": timed(lambda: sql(pg, "DROP DATABASE runbook")),
                  "create": timed(lambda: sql(pg, "CREATE DATABASE runbook"))}
        t = time.perf_counter()
        out = subprocess.run(["psql", "-q", "-X", "-e", "-v", "ON_ERROR_STOP=1", "-c",
                              "\\timing on", "-f", str(plain), "runbook"], check=True, env=env,
                             capture_output=True, text=True).stdout
        psql = time.perf_counter() - t
        phases.update(psql_phases(out))
        phases["other"] = psql - sum(psql_phases(out).values())
        return phases

    sql(pg, "CHECKPOINT")
    t = time.perf_counter()
    rb_phases = runbook()
    t_runbook = time.perf_counter() - t
    sql(pg, "DROP DATABASE runbook")

    def restore(backup: Any, how: PostgresExecutor = ex) -> tuple[float, float, str, dict[str, float]]:
        sql(pg, "DROP TABLE pgbench_history", DB)  # the damage
        sql(pg, "CHECKPOINT")
        t = time.perf_counter()
        asyncio.run(how.prepare(backup))
        kept, _, swap = asyncio.run(how.swap(backup.id))
        total = time.perf_counter() - t
        problem = asyncio.run(how._verify_db(DB, dict(backup.versions)))
        assert problem is None, problem
        sql(pg, f'DROP DATABASE "{kept}"')  # only to free the disk for the next method
        phases = dict(how.phase_seconds)
        phases["swap"] = swap
        phases["other"] = total - sum(phases.values())
        return total, swap, kept, phases

    t_snap, swap_snap, _, _ = restore(b)
    dump_only = replace(b, versions={k: v for k, v in b.versions.items() if k != "snapshot_db"})
    t_old, _, _, old_phases = restore(dump_only, old)
    t_dump, swap_dump, kept, dump_phases = restore(dump_only)
    journal.close()

    rows = [
        ("runbook: drop + create + psql plain dump", t_runbook, "", ""),
        ("rollbackd: snapshot db renamed in + check + swap", t_snap,
         f"FILE_COPY {floors['file_copy']:.2f}s / WAL_LOG {floors['wal_log']:.2f}s",
         f"{t_runbook / t_snap:.1f}x (goal >= {SNAPSHOT_GOAL:g}x)"),
        (f"rollbackd: pg_restore -j {jobs} new db + count(*) + swap", t_old, "runbook",
         f"{t_runbook / t_old:.2f}x (the previous method)"),
        (f"rollbackd: sections, {streams} COPY streams + swap", t_dump, "runbook",
         f"{t_runbook / t_dump:.2f}x (goal >= {DUMP_GOAL:g}x)"),
        ("rename swap (terminate + 2 renames)", swap_dump,
         f"{floors['rename'] * 1000:.0f} ms", f"snapshot path {swap_snap * 1000:.0f} ms"),
    ]
    print(f"\nPostgreSQL restore, {size / 2**30:.2f} GiB (pgbench -s {scale}), "
          f"the old database kept (e.g. {kept})")
    print(f"{'method':<56} {'seconds':>8}  {'floor':<34} speed-up vs runbook")
    for name, sec, floor, ratio in rows:
        print(f"{name:<56} {sec:>8.2f}  {floor:<34} {ratio}")

    print(f"\nWhere the time goes (seconds), load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    cols = [("runbook", rb_phases, t_runbook), (f"pg_restore -j {jobs}", old_phases, t_old),
            (f"sections x{streams}", dump_phases, t_dump)]
    print(f"{'phase':<48}" + "".join(f"{c:>18}" for c, _, _ in cols))
    for key, label in PHASES:
        if any(key in p for _, p, _ in cols):
            print(f"{label:<48}" + "".join(
                f"{p[key]:>18.2f}" if key in p else f"{'-':>18}" for _, p, _ in cols))
    print(f"{'total':<48}" + "".join(f"{tot:>18.2f}" for _, _, tot in cols))
    print(f"{'speed-up vs runbook':<48}" + "".join(
        f"{t_runbook / tot:>17.2f}x" for _, _, tot in cols))
    ok = t_runbook / t_snap >= SNAPSHOT_GOAL and t_runbook / t_dump >= DUMP_GOAL
    print("goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark (not a test): SQLite backup and restore on a 1 GiB database, beside their floors.

    .venv/bin/python bench/recovery.py                 # 1 GiB in a temporary dir under /var/tmp
    .venv/bin/python bench/recovery.py --size-mib 256 --repeat 5 --dir /srv/scratch

It builds a WAL-mode SQLite database of --size-mib (rows of random blobs, so nothing compresses)
and times, each --repeat times (median shown), with a warm page cache for every method alike:

- backup floor: `cp` of the file, then fsync of the copy;
- rollbackd's backup: the online backup API (one read snapshot, consistent while the app
  writes) into a new file, then fsync; and the same followed by sha256 and integrity_check,
  which is what makes a backup count (the store does all three before it catalogs one);
- restore: the runbook's way, with the app stopped: copy the backup over the live file + fsync;
  rollbackd's way: the copy is staged beside the live file (copy + sha256 + fsync + check) while
  the app still runs, so the app is stopped only for the swap (hard link keeps the old file,
  rename puts the copy in place, fsync of the directory).

It prints a table beside the goals (backup API within 3x of cp + fsync; restore critical path
under 10 ms) and exits 1 when a goal is missed. Nothing here talks to the network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollbackd.daemon.backup.files import checksum, copy_hashed, fsync_file  # noqa: E402
from rollbackd.daemon.backup.sqlite import check_copy  # noqa: E402
from rollbackd.daemon.backup.sqlite_copy import online_backup_blocking as online_backup  # noqa: E402
from rollbackd.daemon.rollback.data_settings import SqliteDatabase  # noqa: E402
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor  # noqa: E402

BACKUP_GOAL = 3.0
CRITICAL_GOAL = 0.010


def build(path: Path, size_mib: int) -> None:
    rows = size_mib * 1024 * 1024 // 1024
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('0002')")
        db.execute("CREATE TABLE grades (id INTEGER PRIMARY KEY, user_id INTEGER, "
                   "blob BLOB, created_at TEXT DEFAULT (datetime('now')))")
        db.execute("BEGIN")
        db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                   " INSERT INTO grades (user_id, blob) SELECT i % 1000, randomblob(960) FROM n",
                   (rows,))
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")  # as a live app database would be


def timed(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None,
          ) -> float:
    runs = []
    for _ in range(repeat):
        if setup:
            setup()
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the scratch directory goes (a real disk, not tmpfs)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rollbackd-bench-", dir=args.dir))
    try:
        return run(work, args.size_mib, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size_mib: int, repeat: int, figures: dict[str, float] | None = None) -> int:
    """Measure and print; `figures` (when given) receives the medians in seconds and the size."""
    live, copy = work / "grading.db", work / "copy.db"
    print(f"building a {size_mib} MiB WAL database in {work} ...", flush=True)
    build(live, size_mib)
    size = live.stat().st_size
    shutil.copyfile(live, work / "warm")  # every method starts with the file in the page cache
    os.unlink(work / "warm")

    def fresh() -> None:
        copy.unlink(missing_ok=True)

    def cp_fsync() -> None:
        subprocess.run(["cp", str(live), str(copy)], check=True)
        fsync_file(copy)

    def backup_api() -> None:
        online_backup(live, copy, 30.0)
        fsync_file(copy)

    def backup_verified() -> None:
        backup_api()
        checksum(copy)
        assert check_copy(copy, "alembic_version") is None

    floor = timed(cp_fsync, repeat, fresh)
    api = timed(backup_api, repeat, fresh)
    verified = timed(backup_verified, repeat, fresh)

    # Restore: the backup is `copy`; the app is stopped in both cases (not timed: the same).
    backup = work / "backup.db"
    online_backup(live, backup, 30.0)
    digest, _ = checksum(backup)
    ex = SqliteExecutor(SqliteDatabase(kind="sqlite", path=live))
    staged = ex.staged(1)

    def plain_restore() -> None:
        shutil.copyfile(backup, live)
        fsync_file(live)

    def stage() -> None:
        staged.unlink(missing_ok=True)
        assert copy_hashed(backup, staged) == digest
        assert check_copy(staged, "alembic_version") is None

    def clean_kept() -> None:
        for p in work.glob("grading.db.corrupted.*"):
            p.unlink()

    plain = timed(plain_restore, repeat)
    staging = timed(stage, repeat)
    swaps = []
    for _ in range(repeat):
        stage()
        clean_kept()
        _, _, seconds = ex.swap(staged)
        swaps.append(seconds)
    critical = statistics.median(swaps)
    if figures is not None:  # for bench/run.py's combined tables
        figures.update(size=size, cp=floor, api=api, verified=verified, plain=plain,
                       staging=staging, critical=critical)

    rows = [
        ("backup: cp + fsync (floor)", floor, "1.00x", ""),
        ("backup: SQLite online backup API + fsync", api, f"{api / floor:.2f}x",
         f"<= {BACKUP_GOAL:g}x {'ok' if api <= BACKUP_GOAL * floor else 'MISSED'}"),
        ("  + sha256 + integrity_check (a verified backup)", verified,
         f"{verified / floor:.2f}x", ""),
        ("restore: copy over the live file + fsync (app stopped)", plain, "", ""),
        ("restore: staging ahead, app still running (copy, sha256, fsync, check)", staging,
         "", ""),
        ("restore: critical path, app stopped -> file in place (link + rename)", critical,
         f"{plain / critical:,.0f}x shorter",
         f"< {CRITICAL_GOAL * 1000:g} ms {'ok' if critical < CRITICAL_GOAL else 'MISSED'}"),
    ]
    print(f"\nSQLite database: {size / (1 << 20):,.0f} MiB, median of {repeat} runs\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  {'seconds':>9}  {'vs floor':>16}  goal")
    for name, seconds, rel, goal in rows:
        print(f"{name:<{width}}  {seconds:>9.4f}  {rel:>16}  {goal}")
    missed = api > BACKUP_GOAL * floor or critical >= CRITICAL_GOAL
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Takeover times, measured (a bench, not a test): kill -9 the owner mid-rollback again and
again (default takeover_after, 10 s) and time the other instance's lock, start, first probe and
first journal write (holding the interrupted incident). Printed as a table; each must be within
the bound (exit 1 when not).

    .venv/bin/python bench/takeover.py        # or: bench/run.py --only takeover

It drives the cluster tests' fixtures (a throwaway PostgreSQL, the sample app, two real
daemons), so it runs under pytest with those fixtures loaded as plugins. Whether a takeover
happens at all, and holds the interrupted incident, is tested in tests/cluster/test_takeover.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import (
    Cluster,
    Instance,
    hanging_restart,
    kill_orphans,
    query,
    restart_runs,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
TAKEOVER = 10.0


def _held_at(c: Cluster, incident: int, after: int) -> Any:
    rows = query(c.dsn, "SELECT id, at FROM timeline WHERE incident_id = %s AND event = 'held'"
                 " AND id > %s ORDER BY id", (incident, after))
    return rows[0] if rows else None


def test_takeover_times_after_kill9_mid_rollback(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    argv = {n: hanging_restart(tmp_path, n)[0] for n in ("a", "b")}
    marker = hanging_restart(tmp_path, "a")[1]

    def start(name: str) -> Instance:
        return c.start(name, c.config(name, takeover_after=f"{TAKEOVER:g}s",
                                      restart_argv=argv[name]))

    insts = {"a": start("a")}
    assert c.wait_owner("grading") == "a"
    insts["b"] = start("b")
    wait_for(lambda: query(c.dsn, "SELECT 1 FROM ledger WHERE known_good_at IS NOT NULL"),
             20, "v1 known-good")
    c.ws.deploy_broken()
    wait_for(lambda: len(restart_runs(marker)) == 1, 30, "the first restart step to hang")
    incident = int(query(c.dsn, "SELECT id FROM incidents")[0]["id"])
    rows, last_held = [], 0
    for run in range(RUNS):
        owner = c.owner("grading")
        assert owner is not None
        other = "b" if owner == "a" else "a"
        killed = time.time()
        insts[owner].daemon.kill9()
        kill_orphans(marker)
        c.wait_owner("grading", TAKEOVER + 5, among=(other,))
        held = wait_for(lambda after=last_held: _held_at(c, incident, after), 10,
                        "held by the new owner")
        last_held = held["id"]
        term = wait_for(lambda: (t := query(
            c.dsn, "SELECT * FROM cluster_terms WHERE target = 'grading' ORDER BY epoch DESC"
            " LIMIT 1")[0])["first_probe_at"] and t, 10, "the new owner's first probe")
        rows.append({
            "run": run + 1, "from": owner, "to": other,
            "lock": term["acquired_at"].timestamp() - killed,
            "start": term["active_at"].timestamp() - killed,
            "first_probe": term["first_probe_at"].timestamp() - killed,
            "first_write": datetime.fromisoformat(held["at"]).timestamp() - killed,
        })
        insts[owner] = start(owner)  # back as the standby
        if run + 1 < RUNS:  # a person resumes the held rollback: it hangs again, on `other`
            runs = len(restart_runs(marker))
            insts[other].daemon.result("approve", id=incident)
            wait_for(lambda runs=runs: len(restart_runs(marker)) == runs + 1, 20,
                     "the resumed restart step to hang")
    print(f"\ntakeover after kill -9 of the owner mid-rollback (takeover_after = {TAKEOVER:g}s)")
    print("run  from  to  lock     start    first probe  first journal write (held)")
    for r in rows:
        print(f"{r['run']:<4} {r['from']:<5} {r['to']:<3} {r['lock']:5.2f} s  {r['start']:5.2f} s"
              f"  {r['first_probe']:5.2f} s      {r['first_write']:5.2f} s")
    for key in ("lock", "start", "first_probe", "first_write"):
        values = sorted(r[key] for r in rows)
        print(f"{key}: min {values[0]:.2f} s, median {values[len(values) // 2]:.2f} s, "
              f"max {values[-1]:.2f} s")
    assert all(r["first_probe"] < TAKEOVER and r["first_write"] < TAKEOVER for r in rows), rows


def main() -> int:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-p", "tests.conftest", "-p", "tests.cluster.conftest", "-o", "timeout=600",
         str(Path(__file__).resolve())], cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

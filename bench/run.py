"""Benchmarks (not tests), all in one run, each figure beside its alternative measured alike.

    .venv/bin/python -m bench                      # everything (about 6 minutes)
    .venv/bin/python -m bench --quick              # 1 run each, small sizes (about 3 minutes)
    .venv/bin/python -m bench --only detect overhead --runs 5

Sections (--only picks some):

- detect: every drill scenario (the demo's sample app, and a Docker app when an engine is
  reachable) --runs times; time to detect from the moment the fault is in place, against the
  configured bound (interval x failure_threshold + timeout of the fastest probe that sees it),
  and onset -> verified;
- recover: decision -> verified per deployment backend against the runbook's manual times
  (bench/deploy.py: git, docker, kubernetes);
- backup: SQLite backup and restore throughput against `cp` (bench/recovery.py), and
  PostgreSQL restore against the runbook's dump + psql (bench/recovery_pg.py, when present);
- overhead: the daemon watching 50, 200 and 1,000 probes (bench/probes.py): CPU, RSS, lag p99;
- peer: CPU per probe beside Prometheus' blackbox_exporter, http at 600 targets and https at
  100 (bench/peer.py; both binaries from scripts/services).

Exit 1 when a section failed or missed its goal. Only 127.0.0.1 and local sockets are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The repository first, never bench/ itself: bench/probes.py would shadow the probes package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from rollbackd.daemon.drills.text import columns  # noqa: E402

SECTIONS = ("detect", "recover", "backup", "overhead", "peer", "load", "takeover")
PROBE_COUNTS = (50, 200, 1000)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return (f"{model}, {os.cpu_count()} CPUs, {mem / 2**20:.1f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}; load average "
            f"{os.getloadavg()[0]:.2f} at the start")


def heading(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


# -- detect: the drills of the demo ---------------------------------------------------------------

def _s(v: float) -> str:
    return f"{v:.1f} s"


async def _detect(runs: int, docker: bool) -> list[tuple[str, ...]]:
    from rollbackd.daemon.demo.run import DemoSession

    work = Path(tempfile.mkdtemp(prefix="rollbackd-bench-detect-"))
    found: dict[str, list[Any]] = {}
    try:
        async with DemoSession(work, lambda m: print(f"  {m}", flush=True),
                               docker=docker) as session:
            for i in range(runs):
                for label, target, scenario in session.targets():
                    row = await session.drill(label, target, scenario)
                    found.setdefault(label, []).append((row, session.detection_bound(row)))
                print(f"  run {i + 1} of {runs} done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = [("scenario", "runs", "detected (fault in place ->)", "max", "bound", "probe",
              "within bound", "onset -> verified")]
    for label, rows in found.items():
        done = [r for r, _ in rows if r.run is not None and r.run.passed]
        bound = rows[0][1]
        if not done or bound is None:
            note = rows[0][0].note or (rows[0][0].run.reason if rows[0][0].run else "?")
            table.append((label, str(len(rows)), "-", "-", "-", "-", f"FAILED: {note}", "-"))
            continue
        # From the moment the injector returned (the fault is in place); a probe may see a
        # restart's downtime before the injector is done: that counts as 0.
        detect = [max(0.0, r.run.timings["detected"] - r.run.timings.get("injected", 0.0))
                  for r in done]
        verified = [r.run.timings["verified"] for r in done]
        ok = max(detect) <= bound[1] and len(done) == len(rows)
        table.append((label, str(len(rows)), _s(statistics.median(detect)), _s(max(detect)),
                      _s(bound[1]), bound[0], "yes" if ok else "NO",
                      _s(statistics.median(verified))))
    return table


def section_detect(args: argparse.Namespace) -> bool:
    heading(f"Time to detect, per scenario ({args.runs} run(s) each; the demo's probes: 500 ms "
            "intervals)")
    for name, level in (("apscheduler", logging.ERROR), ("mail.log", logging.WARNING),
                        ("rollbackd", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    table = asyncio.run(_detect(args.runs, not args.no_docker))
    print(columns(table))
    print("\nbound = interval x failure_threshold + timeout of the fastest probe that sees the "
          "fault")
    return all(row[6] == "yes" for row in table[1:])


# -- recover: bench/deploy.py ----------------------------------------------------------------------

def section_recover(args: argparse.Namespace) -> bool:
    from bench import deploy

    heading(f"Time to recover per backend, against the runbook ({args.runs} run(s) each, "
            "bench/deploy.py)")
    code = deploy.main(["--runs", str(args.runs)])
    print("\nThe data procedures (SQLite restore, Alembic downgrade, key restore) are timed by "
          "the drills above (onset -> verified); the runbook states no manual time for them.")
    return code == 0


# -- backup: bench/recovery.py (and bench/postgres.py) ---------------------------------------------

def _rate(size: float, seconds: float) -> str:
    return f"{size / 2**20 / seconds:,.0f} MiB/s" if seconds > 0 else "-"


def section_backup(args: argparse.Namespace) -> bool:
    from bench import recovery

    heading(f"Backup and restore throughput against cp ({args.size_mib} MiB SQLite database, "
            f"median of {args.repeat}, bench/recovery.py)")
    figures: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="rollbackd-bench-", dir=args.dir))
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = recovery.run(work, args.size_mib, args.repeat, figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not figures:
        print(out.getvalue())
        return False
    size, cp = figures["size"], figures["cp"]
    rows = [("operation", "seconds", "throughput", "vs cp + fsync"),
            ("cp + fsync (the alternative)", f"{cp:.3f}", _rate(size, cp), "1.00x")]
    for key, label in (("api", "backup: online backup API + fsync"),
                       ("verified", "backup verified (+ sha256 + integrity_check)"),
                       ("plain", "restore the runbook's way: copy over the live file"),
                       ("staging", "restore staging (app still running)")):
        rows.append((label, f"{figures[key]:.3f}", _rate(size, figures[key]),
                     f"{figures[key] / cp:.2f}x"))
    rows.append(("restore critical path (app stopped)", f"{figures['critical'] * 1000:.1f} ms",
                 "-", f"{figures['plain'] / figures['critical']:,.0f}x shorter than the copy"))
    print(columns(rows))
    api_ok = figures["api"] <= recovery.BACKUP_GOAL * cp
    swap_ok = figures["critical"] < recovery.CRITICAL_GOAL
    print(f"\ngoals (bench/recovery.py): backup API within {recovery.BACKUP_GOAL:g}x of cp + "
          f"fsync: {'met' if api_ok else 'MISSED'} ({figures['api'] / cp:.2f}x); restore critical "
          f"path under {recovery.CRITICAL_GOAL * 1000:g} ms: {'met' if swap_ok else 'MISSED'}")
    return (code == 0) & section_postgres(args)


def section_postgres(args: argparse.Namespace) -> bool:
    """bench/recovery_pg.py (a colleague's, with its own throwaway server) in a process."""
    import subprocess

    pg = ROOT / "bench" / "recovery_pg.py"
    if not pg.exists():
        print("\nPostgreSQL restore vs the runbook's pg_dump + psql: not measured in this run "
              "(no bench/recovery_pg.py).")
        return True
    heading(f"PostgreSQL restore against the runbook's drop + create + psql (pgbench scale "
            f"{args.pg_scale}, bench/recovery_pg.py)")
    res = subprocess.run([sys.executable, str(pg), "--scale", str(args.pg_scale), "--dir",
                          str(args.dir)], capture_output=True, text=True, timeout=3600)
    print(res.stdout.rstrip())
    if res.returncode != 0 and "GOAL MISSED" not in res.stdout:  # it broke: show why
        print("\n".join(res.stderr.rstrip().splitlines()[-15:]))
    return res.returncode == 0


# -- load and takeover: bench/load.py, bench/takeover.py (were tests in tests/) -------------------

def section_load(args: argparse.Namespace) -> bool:
    """bench/load.py --minutes 1 in a process: 500 targets x 3 probes, a storm of 100 incidents,
    1,000 control requests; its table, and exit 0 when nothing was lost or run twice."""
    import subprocess

    heading("Load: one daemon, 500 targets x 3 probes, a storm of 100 incidents, 1,000 control "
            "requests (bench/load.py --minutes 1)")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--minutes", "1",
                          "--warmup", "5", "--bar", "test"], capture_output=True, text=True,
                         timeout=600)
    print(res.stdout.rstrip())
    if res.returncode != 0:
        print("\n".join(res.stderr.rstrip().splitlines()[-15:]))
    return res.returncode == 0


def section_takeover(args: argparse.Namespace) -> bool:
    """bench/takeover.py in a process (it runs the cluster fixtures under pytest)."""
    import subprocess

    heading("Takeover after kill -9 of the owner mid-rollback (bench/takeover.py)")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "takeover.py")],
                         capture_output=True, text=True, timeout=1200)
    print(res.stdout.rstrip())
    return res.returncode == 0


# -- overhead: bench/probes.py ---------------------------------------------------------------------

def process_per_check() -> float | None:
    """CPU seconds one check costs when each is a process of its own (curl against a local
    server): what a cron or shell watchdog doing the same checks would pay. None: no curl."""
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    curl = shutil.which("curl")
    if curl is None:
        return None

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    try:
        before, n = os.times(), 40
        for _ in range(n):
            subprocess.run([curl, "-fsS", "-o", "/dev/null", "--max-time", "2", url], check=True)
        after = os.times()
    finally:
        server.shutdown()
        server.server_close()
    return ((after.children_user - before.children_user)
            + (after.children_system - before.children_system)) / n


def section_overhead(args: argparse.Namespace) -> bool:
    from bench import probes

    heading(f"Daemon overhead by probes watched (each every 5 s; warm-up {args.warmup:g} s, "
            f"{args.duration:g} s measured, bench/probes.py)")
    per_check = process_per_check()
    rows = [("probes", "CPU (one core)", "a process per check", "peak RSS", "lag p50", "lag p99",
             "runs/s", "loop waited for CPU", "goals met")]
    ok = True
    for count in PROBE_COUNTS:
        targets = math.ceil(count / 3)
        ns = argparse.Namespace(targets=targets, interval=5.0, duration=args.duration,
                                warmup=args.warmup, profile=None, keep=False, realtime=False)
        figures: dict[str, float] = {}
        print(f"  {targets * 3} probes ({targets} targets x 3) ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            code = probes.run(ns, figures)
        ok &= code == 0
        alternative = "-" if per_check is None else \
            f"{per_check * figures['expected_per_s']:.0%}"
        rows.append((str(targets * 3), f"{figures['cpu']:.1%}", alternative,
                     f"{figures['hwm'] / 2**20:.0f} MB",
                     f"{figures['lag_p50'] * 1000:.1f} ms", f"{figures['lag_p99'] * 1000:.1f} ms",
                     f"{figures['runs_per_s']:.0f} of {figures['expected_per_s']:.0f}",
                     f"{figures['waited']:.1%}", "yes" if code == 0 else "no"))
    print(columns(rows))
    print(f"\ngoals: lag p99 < {probes.GOALS['lag_p99'] * 1000:g} ms, CPU < "
          f"{probes.GOALS['cpu']:.0%} of a core, peak RSS < {probes.GOALS['rss'] / 2**20:g} MB. "
          "A process per check: the CPU the same checks cost as one curl process each (a cron "
          "or shell watchdog), " + (f"{per_check * 1000:.1f} ms of CPU per check here"
                                    if per_check is not None else "not measured (no curl)"))
    return ok


def section_peer(args: argparse.Namespace) -> bool:
    """bench/peer.py in a process per scheme: it starts its own exporter and Prometheus."""
    import subprocess

    ok = True
    for scheme in ("http", "https"):
        heading(f"CPU per probe beside blackbox_exporter, {scheme} (bench/peer.py, median of "
                f"{args.runs})")
        res = subprocess.run([sys.executable, str(ROOT / "bench" / "peer.py"), "--scheme", scheme,
                              "--runs", str(args.runs), "--duration", str(args.duration * 3)],
                             capture_output=True, text=True, timeout=3600)
        print(res.stdout.rstrip() or res.stderr.rstrip()[-2000:])
        ok &= res.returncode == 0
    return ok


RUN: dict[str, Callable[[argparse.Namespace], bool]] = {
    "detect": section_detect, "recover": section_recover, "backup": section_backup,
    "overhead": section_overhead, "peer": section_peer, "load": section_load,
    "takeover": section_takeover}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "")
                                     .splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="1 run, 64 MiB, 10 s per size")
    parser.add_argument("--runs", type=int, default=3, help="drill and rollback runs")
    parser.add_argument("--size-mib", type=int, default=256, help="SQLite database size")
    parser.add_argument("--repeat", type=int, default=3, help="backup/restore repetitions")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per size")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--pg-scale", type=int, default=20, help="pgbench scale (70: 1 GiB)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch (a disk)")
    parser.add_argument("--no-docker", action="store_true", help="no Docker app in detect")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.size_mib, args.repeat, args.duration, args.warmup = 1, 64, 1, 10.0, 5.0
        args.pg_scale = 5
    print(f"# rollbackd benchmarks\n\nmachine: {machine()}", flush=True)
    started, failed = time.monotonic(), []
    for name in args.only:
        try:
            if not RUN[name](args):
                failed.append(name)
        except Exception as exc:  # one broken section must not hide the others
            print(f"\n{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
    print(f"\ndone in {time.monotonic() - started:.0f} s"
          + (f"; missed or failed: {', '.join(failed)}" if failed else "; every goal met"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark (not a test): the real daemon watching many targets, against local endpoints.

    .venv/bin/python bench/probes.py                  # 200 targets x 3 probes, 5 s, 60 s measured
    .venv/bin/python bench/probes.py --duration 20 --targets 50 --profile /tmp/rollbackd.prof
    .venv/bin/python bench/probes.py --realtime       # as root, on a busy shared machine

It starts a small asyncio HTTP server (GET /health, POST /api/auth/login) in a process of its
own, writes a config of N targets, each with http_health (with a latency baseline), login and
sqlite_integrity (a small shared file) probes, and runs `rollbackd run` on it. After a warm-up it
measures for --duration seconds, from outside the daemon:

- CPU: utime + stime of the daemon process (every thread) from /proc/<pid>/stat, as a share of
  one core over the measured wall time;
- peak RSS: VmHWM from /proc/<pid>/status;
- scheduling lag (actual start minus due time): exactly, per run, by a hook on the daemon's
  Metrics.scheduler_ran that the daemon process loads before it starts (called as each probe
  run's task really begins, with its lag behind its tick's due time); and, as a cross-check,
  from the daemon's own rollbackd_scheduler_lag_seconds histogram (coarser: bucket bounds);
- contention: how long the event-loop thread waited for a CPU (/proc/<pid>/task/<pid>/schedstat)
  and the load average, because on a shared machine other processes' CPU time shows up as lag.

It prints a table beside the goals and exits 1 when a goal is missed. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"lag_p99": 0.050, "cpu": 0.15, "rss": 150 * 1024 * 1024}
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the local app: answers fast ----------------------------------------------------------------

async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        login = head.startswith(b"POST /api/auth/login ")
        body = json.dumps({"token": "t"} if login else {"status": "ok", "version": "v1"}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


# --- the daemon, with a lag hook ----------------------------------------------------------------

def _daemon(lag_file: Path, profile: str | None, realtime: bool, argv: list[str]) -> int:
    """`rollbackd <argv>` in this process, recording (when, lag) of every probe run's start."""
    sys.path.insert(0, str(ROOT))
    if realtime:  # before any thread starts: every thread of the daemon inherits it
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    from rollbackd.daemon.cli import main
    from rollbackd.daemon.metrics.instruments import Metrics

    # Arrays of doubles, not a list of tuples: a tuple per run would be one more object for the
    # daemon's cyclic GC to walk in every full collection, a cost the bench would add.
    ats, lags = array("d"), array("d")
    gc_ends, gc_pauses = array("d"), array("d")  # each collection's end and length
    gc_began = [0.0]
    original = Metrics.scheduler_ran

    def timed(self: Metrics, lag: float) -> None:  # each probe run's start minus its due time
        ats.append(time.time())
        lags.append(lag)
        original(self, lag)

    def collected(phase: str, info: dict[str, int]) -> None:  # the cyclic GC's pauses
        if phase == "start":
            gc_began[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_began[0])
            gc_ends.append(time.time())

    Metrics.scheduler_ran = timed  # type: ignore[method-assign]
    gc.callbacks.append(collected)
    try:
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)  # CPU, not wall: the machine is shared
            code = profiler.runcall(main, argv)
            profiler.dump_stats(profile)
            return code
        return main(argv)
    finally:
        lag_file.write_text("\n".join(f"{at:.6f} {lag:.6f}"
                                     for at, lag in zip(ats, lags, strict=True)))
        gc_file(lag_file).write_text("\n".join(f"{at:.6f} {pause:.6f}"
                                               for at, pause in zip(gc_ends, gc_pauses,
                                                                    strict=True)))


def gc_file(lag_file: Path) -> Path:
    """Where `_daemon` writes (when, length) of each cyclic GC collection in the daemon."""
    return lag_file.with_suffix(".gc.txt")


# --- the driver ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _config(work: Path, targets: int, interval: float, app: int, metrics: int) -> str:
    db = work / "app.sqlite3"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);"
                           "CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY);"
                           "INSERT INTO alembic_version VALUES ('0002');")
        conn.executemany("INSERT INTO users (email) VALUES (?)",
                         [(f"u{i}@example.org",) for i in range(500)])
        conn.commit()
    (work / "probe-password").write_text("bench-password\n")
    url = f"http://127.0.0.1:{app}"
    out = [f'[daemon]\nstate_dir = "{work / "state"}"\nsocket = "{work / "ctl.sock"}"\n'
           f'metrics_address = "127.0.0.1:{metrics}"\n']
    common = f'interval = "{interval:g}s"\ntimeout = "2s"\n'
    for i in range(targets):
        t = f"targets.app{i:03d}.probes"
        out.append(f'[{t}.health]\nkind = "http_health"\nurl = "{url}/health"\n{common}'
                   'expect_json = {status = "ok"}\nversion_field = "version"\n'
                   f'[{t}.health.latency]\nwindow = "30s"\n'
                   f'[{t}.login]\nkind = "login"\nurl = "{url}/api/auth/login"\n{common}'
                   f'email = "probe@example.org"\npassword_file = "{work / "probe-password"}"\n'
                   f'[{t}.db]\nkind = "sqlite_integrity"\npath = "{db}"\n{common}'
                   'required_tables = ["users"]\nalembic_revisions = ["0001", "0002"]\n'
                   'row_counts = {users = 0.5}\n')
    return "\n".join(out)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _run_delay(pid: int) -> float:
    """Seconds the daemon's main thread (the event loop) has waited on a run queue for a CPU."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _scrape(port: int) -> dict[str, float]:
    """Samples of the lag histogram and the run counters, summed over labels but `result`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "rollbackd_scheduler_lag_seconds_bucket":
                found[f"le={s.labels['le']}"] = s.value
            elif s.name == "rollbackd_probe_runs_total":
                key = f"runs.{s.labels['result']}"
                found[key] = found.get(key, 0.0) + s.value
    return found


def _histogram_quantile(before: dict[str, float], after: dict[str, float], q: float) -> str:
    bounds = sorted((float(k[3:]), after[k] - before.get(k, 0.0)) for k in after
                    if k.startswith("le="))
    total = bounds[-1][1] if bounds else 0.0
    if not total:
        return "n/a"
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= q * total:
            if bound == float("inf"):
                return f"> {previous_bound * 1000:g} ms"
            share = (q * total - previous_count) / max(count - previous_count, 1e-9)
            estimate = previous_bound + (bound - previous_bound) * share
            return f"~{estimate * 1000:.1f} ms (<= {bound * 1000:g} ms)"
        previous_bound, previous_count = bound, count
    return "n/a"


def _quantile(values: list[float], q: float) -> float:
    """Nearest rank, as rollbackd/policies/latency.py computes it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def run(args: argparse.Namespace, figures: dict[str, float] | None = None) -> int:
    """Measure and print; `figures` (when given) receives the measured values."""
    work = Path(tempfile.mkdtemp(prefix="rollbackd-bench-"))
    app_port, metrics_port = _free_port(), _free_port()
    config = work / "rollbackd.toml"
    config.write_text(_config(work, args.targets, args.interval, app_port, metrics_port))
    lag_file, log = work / "lags.txt", work / "daemon.log"
    me = str(Path(__file__).resolve())
    server = subprocess.Popen([sys.executable, me, "_server", str(app_port)])
    daemon: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _listening(app_port), 10, "the local app")
        cmd = [sys.executable, me, "_daemon", str(lag_file)]
        cmd += ["--profile", args.profile] if args.profile else []
        cmd += ["--realtime"] if args.realtime else []
        with open(log, "wb") as out:
            daemon = subprocess.Popen([*cmd, "--", "run", "--config", str(config)], stdout=out,
                                      stderr=subprocess.STDOUT, cwd=work)
        _wait(lambda: "status=ready" in log.read_text(errors="replace") or daemon.poll() is not None,
              60, "the daemon to be ready")
        if daemon.poll() is not None:
            raise SystemExit(f"bench: the daemon exited:\n{log.read_text(errors='replace')}")
        print(f"bench: {args.targets} targets x 3 probes every {args.interval:g}s; warm-up "
              f"{args.warmup:g}s, then {args.duration:g}s measured (work dir {work})", flush=True)
        time.sleep(args.warmup)
        t0, cpu0, m0 = time.time(), _cpu_seconds(daemon.pid), _scrape(metrics_port)
        wait0 = _run_delay(daemon.pid)
        time.sleep(args.duration)
        t1, cpu1, m1 = time.time(), _cpu_seconds(daemon.pid), _scrape(metrics_port)
        waited, load = (_run_delay(daemon.pid) - wait0) / (t1 - t0), os.getloadavg()[0]
        hwm = _status_kb(daemon.pid, "VmHWM") * 1024
        rss = _status_kb(daemon.pid, "VmRSS") * 1024
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        server.terminate()
        server.wait(10)
    lags = [float(lag) for at, lag in (line.split() for line in lag_file.read_text().splitlines())
            if t0 <= float(at) <= t1] if lag_file.exists() else []
    cpu = (cpu1 - cpu0) / (t1 - t0)
    runs = {k[5:]: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1 if k.startswith("runs.")}
    expected = args.targets * 3 / args.interval
    text = log.read_text(errors="replace")
    skipped = text.count("maximum number of running instances reached")
    missed = text.count("was missed by")
    if figures is not None:  # for bench/run.py's combined tables
        figures.update(lag_p50=_quantile(lags, 0.50) if lags else float("nan"),
                       lag_p99=_quantile(lags, 0.99) if lags else float("nan"), cpu=cpu,
                       hwm=hwm, rss=rss, waited=waited, load=load,
                       runs_per_s=sum(runs.values()) / (t1 - t0), expected_per_s=expected)
    print_table(lags, m0, m1, cpu, hwm, rss)
    print(f"\nprobe runs: {sum(runs.values()) / (t1 - t0):.1f}/s (expected {expected:.1f}/s), by "
          f"result {json.dumps({k: int(v) for k, v in sorted(runs.items())})}; runs skipped "
          f"(still running) {skipped}, missed {missed}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f}; the event-loop thread waited "
          f"for a CPU {waited:.1%} of the time (other processes compete: lag includes that)")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    met = (lags and _quantile(lags, 0.99) < GOALS["lag_p99"]) and cpu < GOALS["cpu"] \
        and hwm < GOALS["rss"]
    return 0 if met else 1


def print_table(lags: list[float], m0: dict[str, float], m1: dict[str, float], cpu: float,
                hwm: int, rss: int) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:.1f} ms"

    def ok(good: bool) -> str:
        return "yes" if good else "NO"

    p50 = _quantile(lags, 0.50) if lags else float("nan")
    p99 = _quantile(lags, 0.99) if lags else float("nan")
    rows = [
        (f"scheduling lag p50 (exact, n={len(lags)})", ms(p50), "", ""),
        ("scheduling lag p99 (exact)", ms(p99), "< 50 ms", ok(p99 < GOALS["lag_p99"])),
        ("scheduling lag max (exact)", ms(max(lags)) if lags else "n/a", "", ""),
        ("lag p50 (daemon histogram)", _histogram_quantile(m0, m1, 0.50), "", ""),
        ("lag p99 (daemon histogram)", _histogram_quantile(m0, m1, 0.99), "< 50 ms", ""),
        ("CPU, share of one core", f"{cpu:.1%}", "< 15%", ok(cpu < GOALS["cpu"])),
        ("peak RSS (VmHWM)", f"{hwm / 2**20:.0f} MB", "< 150 MB", ok(hwm < GOALS["rss"])),
        ("RSS at the end (VmRSS)", f"{rss / 2**20:.0f} MB", "", ""),
    ]
    widths = [max(len(r[i]) for r in [("measure", "value", "goal", "met"), *rows])
              for i in range(4)]
    for row in [("measure", "value", "goal", "met"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_server":
        asyncio.run(_serve(int(sys.argv[2])))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "_daemon":
        rest = sys.argv[2:]
        split = rest.index("--")
        head, argv = rest[:split], rest[split + 1:]
        profile = head[head.index("--profile") + 1] if "--profile" in head else None
        return _daemon(Path(head[0]), profile, "--realtime" in head, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between runs")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--profile", help="write a cProfile of the daemon process here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--realtime", action="store_true",
                        help="run the daemon SCHED_FIFO (root), so that other processes on a "
                        "shared machine do not add their CPU time to its lag")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

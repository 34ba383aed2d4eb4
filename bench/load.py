"""Load run (not a unit test): one real `rollbackd run` under everything at once, on 127.0.0.1.

    .venv/bin/python bench/load.py --minutes 10      # the documented 10-minute run
    .venv/bin/python bench/load.py --minutes 1       # what bench/run.py --only load runs
    .venv/bin/python bench/load.py --json out.json   # the figures as JSON too

- 500 targets with 3 probes each (http_health with a JSON check, login, sqlite_integrity on a
  shared file) every --interval seconds (10 s) against a local asyncio HTTP server;
- a storm: 100 more targets, each a real git repository deployed by the daemon's git backend
  (the local server answers 500 while a target's checked-out STATE file says broken), all broken
  by a commit within a few seconds: 100 incidents in a minute, each rolled back (git checkout
  of the known-good commit, a restart command that appends to a marker file) and verified;
- 1,000 control requests at once on the Unix socket (status, incidents, breaker, help), in the
  middle of the measured window.

Measured from outside the daemon over the window: CPU (utime+stime of the process, as a share
of one core), peak RSS (VmHWM), scheduler lag (each probe run's start minus its due time, by a
hook on the daemon's own lag measurement loaded into the daemon process, as bench/probes.py
does), control-request latency (p50/p99/max, all answered?), mails accepted by a real SMTP
server (aiosmtpd), and "nothing lost, nothing run twice": every journaled mail delivered once
per recipient, every storm-held mail in a delivered digest, one incident per storm target, each
resolved, every step done once, each restart command run exactly once.

Exit status 0 when every check holds and the figures meet the goals (--bar test: the lower bar
the 60-second test uses on a shared 2-CPU machine).
"""

from __future__ import annotations

import argparse
import asyncio
import email
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
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
BARS = {  # goal for the 10-minute run; the lower bar of the 60-second test on a busy machine
    "goal": {"lag_p99": 0.25, "cpu": 0.60, "rss_mb": 250, "ctl_p99": 2.0, "runs": 0.95},
    # The test shares 2 CPUs with whatever else runs (load average 8 seen): starved, not slow.
    "test": {"lag_p99": 5.0, "cpu": 1.00, "rss_mb": 400, "ctl_p99": 30.0, "runs": 0.80},
}
STORM_MAIL_LIMIT = 40
"""Mails a storm of 100 incidents may cause in all (opened/resolved of the first storm_max
incidents, then digests): unbounded it would be 200."""


# --- the local app: fast answers; storm targets answer from their checked-out STATE file ------

async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  storm: Path) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        path = head.split(b" ", 2)[1].decode()
        status = b"200 OK"
        if path.startswith("/storm/"):
            name = path.split("/")[2]
            try:
                broken = (storm / name / "STATE").read_text().strip() != "ok"
            except OSError:
                broken = True
            status = b"500 Internal Server Error" if broken else status
            body = json.dumps({"status": "broken" if broken else "ok"}).encode()
        elif head.startswith(b"POST "):
            body = b'{"token": "t"}'
        else:
            body = b'{"status": "ok", "version": "v1"}'
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def _serve(port: int, storm: Path) -> None:
    server = await asyncio.start_server(lambda r, w: _answer(r, w, storm), "127.0.0.1", port,
                                        backlog=4096)
    async with server:
        await server.serve_forever()


# --- the daemon process, with the lag hook -----------------------------------------------------

def _daemon(lag_file: Path, argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from rollbackd.daemon.cli import main
    from rollbackd.daemon.metrics.instruments import Metrics

    lags: list[tuple[float, float]] = []
    original = Metrics.scheduler_ran

    def timed(self: Metrics, lag: float) -> None:  # each probe run's start minus its due time
        lags.append((time.time(), lag))
        original(self, lag)

    Metrics.scheduler_ran = timed  # type: ignore[method-assign]
    try:
        return main(argv)
    finally:
        lag_file.write_text("\n".join(f"{at:.6f} {lag:.6f}" for at, lag in lags))


# --- the SMTP server -----------------------------------------------------------------------------

class Mailbox:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.received: list[tuple[list[str], str]] = []  # (recipients, Message-ID)
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content)
                box.received.append((list(envelope.rcpt_tos), str(msg["Message-ID"])))
                return "250 OK"

        self.port = _free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)


# --- helpers -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"load: timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1] if ordered else float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _probe_runs(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rollbackd_probe_runs_total{") and 'target="load' in line)


def _journal(work: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{work / 'state' / 'journal.sqlite3'}?mode=ro", uri=True,
                         timeout=10)
    db.row_factory = sqlite3.Row
    with closing(db):
        return db.execute(sql, args).fetchall()


# --- the setup ------------------------------------------------------------------------------------

def _storm_repos(work: Path, n: int) -> list[str]:
    names = [f"storm{i:03d}" for i in range(n)]
    for name in names:
        repo = work / "storm" / name
        repo.mkdir(parents=True)
        subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
        (repo / "STATE").write_text("ok\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "v1")
    return names


def _config(work: Path, args: argparse.Namespace, app: int, metrics: int, smtp: int,
            storm: list[str]) -> str:
    db = work / "app.sqlite3"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);")
        conn.executemany("INSERT INTO users (email) VALUES (?)",
                         [(f"u{i}@example.org",) for i in range(200)])
        conn.commit()
    (work / "probe-password").write_text("load-password\n")
    url = f"http://127.0.0.1:{app}"
    out = [f"""[daemon]
state_dir = "{work / 'state'}"
socket = "{work / 'ctl.sock'}"
metrics_address = "127.0.0.1:{metrics}"

[smtp]
host = "127.0.0.1"
port = {smtp}

[contacts.oncall]
emails = ["oncall@example.com"]

[escalation]
storm_window = "5m"
storm_max = 5
digest_delay = "5s"

[policy]
stable_after = "3s"
verify_timeout = "60s"
"""]
    common = f'interval = "{args.interval:g}s"\ntimeout = "3s"\n'
    for i in range(args.targets):
        t = f"targets.load{i:03d}.probes"
        out.append(f'[{t}.health]\nkind = "http_health"\nurl = "{url}/health"\n{common}'
                   'expect_json = {status = "ok"}\nversion_field = "version"\n'
                   f'[{t}.login]\nkind = "login"\nurl = "{url}/api/auth/login"\n{common}'
                   f'email = "probe@example.org"\npassword_file = "{work / "probe-password"}"\n'
                   f'[{t}.db]\nkind = "sqlite_integrity"\npath = "{db}"\n{common}'
                   'required_tables = ["users"]\n')
    append = "import sys; open(sys.argv[1], 'a').write('restart\\n')"
    for name in storm:
        restart = [sys.executable, "-c", append, str(work / "storm" / f"{name}.restarts")]
        out.append(f'[targets.{name}.deployment]\nkind = "git"\n'
                   f'repo = "{work / "storm" / name}"\nrestart = {json.dumps(restart)}\n'
                   f'command_timeout = "60s"\n'
                   f'[targets.{name}.probes.health]\nkind = "http_health"\n'
                   f'url = "{url}/storm/{name}/health"\ninterval = "1s"\ntimeout = "3s"\n'
                   'failure_threshold = 2\n')
    return "\n".join(out)


# --- 1,000 control requests at once ----------------------------------------------------------------

async def _control_burst(path: str, n: int) -> tuple[list[float], int]:
    """n requests at once; (latency of each answered one, how many were answered ok)."""
    cmds = ["status"] * 1 + ["incidents"] * 3 + ["breaker"] * 3 + ["help"] * 3
    start = asyncio.Event()

    async def one(i: int) -> float | None:
        await start.wait()
        began = time.monotonic()
        deadline = began + 60
        # Connect as rollbackctl does: a full listen backlog is EAGAIN, try again. (asyncio's
        # own connect takes EAGAIN on a Unix socket for "in progress" and hands back a socket
        # that is not connected.)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        while True:
            try:
                sock.connect(path)
                break
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    sock.close()
                    return None
                await asyncio.sleep(0.005)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 24)
        try:
            writer.write(json.dumps({"v": 1, "cmd": cmds[i % len(cmds)], "args": {}}).encode()
                         + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 60)
            ok = json.loads(line)["ok"] is True
        except (OSError, ValueError, TimeoutError):
            return None
        finally:
            writer.close()
        return time.monotonic() - began if ok else None

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)
    start.set()
    results = await asyncio.gather(*tasks)
    answered = [r for r in results if r is not None]
    return answered, len(answered)


# --- the run ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rollbackd-load-"))
    app_port, metrics_port = _free_port(), _free_port()
    box = Mailbox()
    box.controller.start()
    storm = _storm_repos(work, args.storm)
    config = work / "rollbackd.toml"
    config.write_text(_config(work, args, app_port, metrics_port, box.port, storm))
    lag_file, log = work / "lags.txt", work / "daemon.log"
    me = str(Path(__file__).resolve())
    server = subprocess.Popen([sys.executable, me, "_server", str(app_port), str(work / "storm")])
    daemon: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"work": str(work)}
    try:
        with open(log, "wb") as out:
            daemon = subprocess.Popen([sys.executable, me, "_daemon", str(lag_file), "--", "run",
                                       "--config", str(config)], stdout=out,
                                      stderr=subprocess.STDOUT, cwd=work)
        _wait(lambda: "status=ready" in log.read_text(errors="replace") or daemon.poll()
              is not None, 120, "the daemon to be ready")
        if daemon.poll() is not None:
            raise SystemExit(f"load: the daemon exited:\n{log.read_text(errors='replace')}")
        total = args.targets + len(storm)
        print(f"load: {args.targets} targets x 3 probes every {args.interval:g}s + {len(storm)} "
              f"storm targets ({total} targets); warm-up {args.warmup:g}s, then "
              f"{args.minutes * 60:g}s measured (work dir {work})", flush=True)
        _wait(lambda: len(_journal(work, "SELECT 1 FROM ledger WHERE known_good_at IS NOT NULL"
                                         " AND target LIKE 'storm%'")) >= len(storm),
              120, "every storm target known-good")
        time.sleep(args.warmup)
        duration = args.minutes * 60
        t0, cpu0, runs0 = time.time(), _cpu_seconds(daemon.pid), _probe_runs(metrics_port)
        # The storm, early in the window: every storm target gets a broken commit.
        time.sleep(min(5.0, duration / 10))
        storm_at = time.time()
        for name in storm:
            repo = work / "storm" / name
            (repo / "STATE").write_text("broken\n")
            _git(repo, "commit", "-q", "-am", "v2: broken")
        storm_spread = time.time() - storm_at
        # 1,000 control requests at once, in the middle of the window.
        time.sleep(max(0.0, t0 + duration / 2 - time.time()))
        burst_at = time.monotonic()
        latencies, answered = asyncio.run(_control_burst(str(work / "ctl.sock"), args.requests))
        burst_took = time.monotonic() - burst_at
        time.sleep(max(0.0, t0 + duration - time.time()))
        t1, cpu1, runs1 = time.time(), _cpu_seconds(daemon.pid), _probe_runs(metrics_port)
        hwm = _status_kb(daemon.pid, "VmHWM") / 1024
        # The storm settles: every storm incident closed, every mail out (digests included).
        _wait(lambda: len(_journal(work, "SELECT 1 FROM incidents WHERE target LIKE 'storm%'"
                                         " AND state IN ('resolved', 'escalated', 'held',"
                                         " 'transient')")) >= len(storm), 300,
              "the storm incidents to close")
        _wait(lambda: not _journal(work, "SELECT 1 FROM outbox WHERE sent_at IS NULL")
              and not _journal(work, "SELECT 1 FROM mail_held WHERE digest_message_id IS NULL"),
              120, "every mail sent")
        time.sleep(1)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        result.update(_figures(work, args, storm, box, lag_file, t0, t1, cpu1 - cpu0,
                               runs1 - runs0, hwm, latencies, answered, burst_took,
                               storm_spread, daemon.returncode))
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
        server.terminate()
        server.wait(10)
        box.controller.stop()
    running = log.read_text(errors="replace").split("daemon status=stopping")[0]
    result["log_errors"] = [line for line in running.splitlines() if " error " in line][:20]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _figures(work: Path, args: argparse.Namespace, storm: list[str], box: Mailbox,
             lag_file: Path, t0: float, t1: float, cpu: float, runs: float, hwm: float,
             latencies: list[float], answered: int, burst_took: float, storm_spread: float,
             exit_code: int) -> dict[str, Any]:
    lags = [float(lag) for at, lag in (line.split() for line in lag_file.read_text().splitlines())
            if t0 <= float(at) <= t1] if lag_file.exists() else []
    incidents = _journal(work, "SELECT id, target, state, detected_at FROM incidents"
                               " WHERE target LIKE 'storm%' ORDER BY id")
    detected = sorted(r["detected_at"] for r in incidents)
    steps = _journal(work, "SELECT incident_id, name, state FROM steps")
    done = Counter((s["incident_id"], s["name"]) for s in steps if s["state"] == "done")
    restarts = {n: len((work / "storm" / f"{n}.restarts").read_text().split())
                if (work / "storm" / f"{n}.restarts").exists() else 0 for n in storm}
    outbox = _journal(work, "SELECT message_id, recipients, sent_at FROM outbox")
    expected = Counter((rcpt, r["message_id"]) for r in outbox
                       for rcpt in json.loads(r["recipients"]))
    got = Counter((rcpt, mid) for rcpts, mid in box.received for rcpt in rcpts)
    held = _journal(work, "SELECT digest_message_id FROM mail_held")
    sent_ids = {r["message_id"] for r in outbox if r["sent_at"]}
    from datetime import datetime
    span = ((datetime.fromisoformat(detected[-1]) - datetime.fromisoformat(detected[0]))
            .total_seconds() if detected else float("nan"))
    wall = t1 - t0
    return {
        "targets": args.targets + len(storm), "probes": args.targets * 3 + len(storm),
        "measured_s": round(wall, 1),
        "cpu_share": round(cpu / wall, 3),
        "rss_peak_mb": round(hwm, 1),
        "lag_p50_ms": round(_quantile(lags, 0.50) * 1000, 1),
        "lag_p99_ms": round(_quantile(lags, 0.99) * 1000, 1),
        "lag_samples": len(lags),
        "probe_runs_share": round(runs / (wall * args.targets * 3 / args.interval), 3),
        "ctl_requests": args.requests, "ctl_answered": answered,
        "ctl_p50_ms": round(_quantile(latencies, 0.50) * 1000, 1),
        "ctl_p99_ms": round(_quantile(latencies, 0.99) * 1000, 1),
        "ctl_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "ctl_burst_s": round(burst_took, 2),
        "storm_broken_within_s": round(storm_spread, 1),
        "storm_incidents": len(incidents),
        "storm_detected_within_s": round(span, 1),
        "storm_targets_with_one_incident": sum(1 for n in storm
                                               if sum(r["target"] == n for r in incidents) == 1),
        "storm_resolved": sum(r["state"] == "resolved" for r in incidents),
        "storm_restarts": sorted(Counter(restarts.values()).items()),
        "steps_done_twice": sum(1 for v in done.values() if v > 1),
        "mails_sent": len(box.received),
        "mails_journaled": len(outbox),
        "mails_lost": sum((expected - got).values()),
        "mails_duplicated": sum((got - expected).values()),
        "held_not_in_a_sent_digest": sum(1 for h in held if h["digest_message_id"] not in sent_ids),
        "daemon_exit": exit_code,
    }


def verdict(r: dict[str, Any], bar: str, storm: int, requests: int) -> list[str]:
    """What failed: empty when every check holds and every figure meets the bar."""
    b, failed = BARS[bar], []
    checks = [
        ("lag p99", r["lag_p99_ms"] / 1000 < b["lag_p99"]),
        ("CPU", r["cpu_share"] < b["cpu"]),
        ("RSS", r["rss_peak_mb"] < b["rss_mb"]),
        ("probe runs", r["probe_runs_share"] >= b["runs"]),
        ("control requests all answered", r["ctl_answered"] == requests),
        ("control p99", r["ctl_p99_ms"] / 1000 < b["ctl_p99"]),
        ("one incident per storm target", r["storm_targets_with_one_incident"] == storm),
        ("storm within a minute", r["storm_detected_within_s"] <= 60),
        ("storm resolved", r["storm_resolved"] == storm),
        ("each restart ran once", r["storm_restarts"] == [(1, storm)] if storm else True),
        ("no step done twice", r["steps_done_twice"] == 0),
        ("no mail lost", r["mails_lost"] == 0 and r["held_not_in_a_sent_digest"] == 0),
        ("no mail twice", r["mails_duplicated"] == 0),
        ("mails bounded", r["mails_sent"] <= STORM_MAIL_LIMIT),
        ("clean exit", r["daemon_exit"] == 0),
    ]
    for name, ok in checks:
        if not ok:
            failed.append(name)
    return failed


def print_table(r: dict[str, Any], bar: str) -> None:
    b = BARS[bar]
    rows = [
        ("targets / probes", f"{r['targets']} / {r['probes']}", ""),
        ("CPU, share of one core", f"{r['cpu_share']:.1%}", f"< {b['cpu']:.0%}"),
        ("peak RSS", f"{r['rss_peak_mb']:.0f} MB", f"< {b['rss_mb']} MB"),
        ("scheduler lag p50 / p99", f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} ms",
         f"p99 < {b['lag_p99'] * 1000:g} ms"),
        ("probe runs done / due", f"{r['probe_runs_share']:.1%}", f">= {b['runs']:.0%}"),
        ("control: answered", f"{r['ctl_answered']}/{r['ctl_requests']} in "
         f"{r['ctl_burst_s']:g} s", "all"),
        ("control p50 / p99 / max", f"{r['ctl_p50_ms']:.0f} / {r['ctl_p99_ms']:.0f} / "
         f"{r['ctl_max_ms']:.0f} ms", f"p99 < {b['ctl_p99'] * 1000:g} ms"),
        ("storm: incidents, detected within", f"{r['storm_incidents']}, "
         f"{r['storm_detected_within_s']:g} s", "1 per target, <= 60 s"),
        ("storm: resolved, restarts run", f"{r['storm_resolved']}, {r['storm_restarts']}",
         "all, once each"),
        ("mails sent (journaled)", f"{r['mails_sent']} ({r['mails_journaled']})",
         f"<= {STORM_MAIL_LIMIT}"),
        ("lost / twice / steps twice", f"{r['mails_lost']} / {r['mails_duplicated']} / "
         f"{r['steps_done_twice']}", "0 / 0 / 0"),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)).rstrip())


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "_server":
        asyncio.run(_serve(int(sys.argv[2]), Path(sys.argv[3])))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "_daemon":
        rest = sys.argv[2:]
        split = rest.index("--")
        return _daemon(Path(rest[0]), rest[split + 1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured minutes")
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between runs")
    parser.add_argument("--storm", type=int, default=100, help="incidents in the storm")
    parser.add_argument("--requests", type=int, default=1000, help="concurrent control requests")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--bar", choices=sorted(BARS), default="goal")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    result = run(args)
    print_table(result, args.bar)
    failed = verdict(result, args.bar, args.storm, args.requests)
    result["failed"] = failed
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if result["log_errors"]:
        print("daemon log errors (first 20):\n  " + "\n  ".join(result["log_errors"]))
    print("load: " + ("all checks hold" if not failed else "FAILED: " + ", ".join(failed)))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

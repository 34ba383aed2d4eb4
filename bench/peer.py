"""Benchmark (not a test): CPU per probe of rollbackd beside Prometheus' blackbox_exporter.

    .venv/bin/python bench/peer.py                           # http, 600 targets, 60 s, 3 runs
    .venv/bin/python bench/peer.py --scheme https --targets 100
    .venv/bin/python bench/peer.py --no-peer --targets 5000  # rollbackd alone (scaling table)
    .venv/bin/python bench/peer.py --profile /tmp/peer.prof  # cProfile of the daemon

Each prober watches its own copy of the same local app (a small asyncio server in a process of
its own that answers GET with 200, a small JSON body and `Connection: close`, over TLS with a
throwaway self-signed certificate for https): rollbackd runs N http_health probes every 5 s
(verify_tls = false for https; reuse_connections left at its default, a new connection per
run); Debian's `prometheus-blackbox-exporter` runs its http prober with the same timeout
(insecure_skip_verify for https), driven by `prometheus`, which scrapes /probe for the same N
targets every 5 s (the exporter's documented set-up: one scrape = one probe). Both copies run
at once, in the same measured window, on 127.0.0.1 free ports; the bench starts and stops them
itself (by PID). Both binaries come from scripts/services.

Per probe = CPU seconds (utime + stime from /proc/<pid>/stat, every thread) over the requests
the prober's app answered in the window. Printed per run and as the median of --runs: rollbackd,
the exporter alone, the exporter plus Prometheus (its scheduler), and rollbackd over the exporter
(the goal's ratio). rollbackd's scheduling lag p99 (exact, bench/probes.py's hook) and RSS too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from bench.probes import (  # noqa: E402
    _cpu_seconds,
    _free_port,
    _listening,
    _quantile,
    _run_delay,
    _status_kb,
    _wait,
    gc_file,
)

EXPORTER = "/usr/bin/prometheus-blackbox-exporter"
PROMETHEUS = "/usr/bin/prometheus"
GOALS = {"http": 1.25, "https": 1.5}
"""rollbackd's CPU per probe over the exporter's, at most."""


# --- the local app --------------------------------------------------------------------------------

class _App:
    def __init__(self) -> None:
        self.served = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /__served "):
                body = str(self.served).encode()
            else:
                self.served += 1
                body = b'{"status": "ok", "version": "v1"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: "
                         b"close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                         + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()


async def _serve(port: int, cert: str | None) -> None:
    tls = None
    if cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert)
    server = await asyncio.start_server(_App().answer, "127.0.0.1", port, backlog=4096, ssl=tls)
    async with server:
        await server.serve_forever()


GO_APP_PATH = "/-/healthy"
"""--app go: the local app is a `prometheus` server answering its health path (Go's net/http)."""


def _served(port: int, scheme: str, go: bool = False) -> int:
    if go:  # its own count of the health path's answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("prometheus_http_requests_total{") \
                        and f'handler="{GO_APP_PATH}"' in line and 'code="200"' in line:
                    return int(float(line.split()[-1]))
        return 0
    ctx = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323 - own cert
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/__served", timeout=10,
                                context=ctx) as resp:
        return int(resp.read())


def _self_signed(path: Path) -> None:
    """A throwaway certificate and key for 127.0.0.1 in one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))


# --- configs --------------------------------------------------------------------------------------

def _rollbackd_config(work: Path, n: int, base: str, metrics: int, interval: float,
                      path: str = "/health") -> str:
    out = [f'[daemon]\nstate_dir = "{work / "state"}"\nsocket = "{work / "ctl.sock"}"\n'
           f'metrics_address = "127.0.0.1:{metrics}"\n']
    tls = "verify_tls = false\n" if base.startswith("https") else ""
    for i in range(n):
        out.append(f'[targets.app{i:04d}.probes.health]\nkind = "http_health"\n'
                   f'url = "{base}{path}?t={i}"\ninterval = "{interval:g}s"\ntimeout = "2s"\n'
                   f'{tls}')
    return "\n".join(out)


def _exporter_config() -> str:
    return ("modules:\n  http_2xx:\n    prober: http\n    timeout: 2s\n    http:\n"
            "      preferred_ip_protocol: ip4\n      tls_config:\n"
            "        insecure_skip_verify: true\n")


def _prometheus_config(n: int, base: str, exporter: int, interval: float,
                       path: str = "/health") -> str:
    targets = json.dumps([f"{base}{path}?t={i}" for i in range(n)])
    return (f"global:\n  scrape_interval: {interval:g}s\n  scrape_timeout: 3s\n"
            "scrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n"
            "    params:\n      module: [http_2xx]\n"
            f"    static_configs:\n      - targets: {targets}\n"
            "    relabel_configs:\n      - source_labels: [__address__]\n"
            "        target_label: __param_target\n      - source_labels: [__param_target]\n"
            "        target_label: instance\n      - target_label: __address__\n"
            f"        replacement: 127.0.0.1:{exporter}\n")


# --- one run --------------------------------------------------------------------------------------

class _Procs:
    """The processes this run started; stopped by PID, in reverse order."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _alive(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    if proc.poll() is not None:
        raise SystemExit(f"bench: {what} exited ({proc.returncode}):\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


def _trees(args: argparse.Namespace) -> dict[str, Path]:
    """The rollbackd source trees this run measures side by side: this one, and --before."""
    trees = {"rollbackd": HERE.parent}
    if args.before:
        trees["before"] = Path(args.before).resolve()
    return trees


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """One run: every tree (and the peer) in one window; with --apart, each tree in a window of
    its own, one after the other (the peer beside the first)."""
    trees = _trees(args)
    if not args.apart or len(trees) == 1:
        return _window(args, trees, args.no_peer)
    out: dict[str, float] = {}
    for i, (name, tree) in enumerate(trees.items()):
        out = _window(args, {name: tree}, args.no_peer or i > 0) | out
    if "exporter_ms" in out:  # the peer ran beside the first tree only
        for name in trees:
            out[f"{name}_ratio"] = out[f"{name}_ms"] / out["exporter_ms"]
    return out


def _window(args: argparse.Namespace, trees: dict[str, Path], no_peer: bool
            ) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="rollbackd-peer-"))
    scheme, procs = args.scheme, _Procs()
    cert = work / "app.pem"
    if scheme == "https":
        _self_signed(cert)
    apps = {name: _free_port() for name in [*trees, *([] if no_peer else ["peer"])]}
    me = str(Path(__file__).resolve())
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        go, path = args.app == "go", GO_APP_PATH if args.app == "go" else "/health"
        for port in apps.values():
            if go:
                (work / f"app{port}.yml").write_text("global:\n  scrape_interval: 1h\n")
                procs.start([PROMETHEUS, f"--config.file={work / f'app{port}.yml'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={work / f'app{port}-tsdb'}"],
                            work / f"app{port}.log", work)
                continue
            procs.start([sys.executable, me, "_app", str(port)]
                        + ([str(cert)] if scheme == "https" else []), work / f"app{port}.log",
                        work)
        for port in apps.values():
            _wait(lambda p=port: _listening(p), 30, "the local app")  # type: ignore[misc]
        for name, tree in trees.items():
            config = work / f"{name}.toml"
            (work / name).mkdir()
            config.write_text(_rollbackd_config(work / name, args.targets,
                                                f"{scheme}://127.0.0.1:{apps[name]}",
                                                _free_port(), args.interval, path))
            cmd = [sys.executable, str(tree / "bench" / "probes.py"), "_daemon",
                   str(work / f"{name}-lags.txt")]
            cmd += ["--profile", args.profile] if args.profile and name == "rollbackd" else []
            daemons[name] = procs.start([*cmd, "--", "run", "--config", str(config)],
                                        work / f"{name}.log", work)
        peer: list[tuple[str, subprocess.Popen[bytes]]] = []
        if not no_peer:
            exporter_port, prom_port = _free_port(), _free_port()
            (work / "blackbox.yml").write_text(_exporter_config())
            (work / "prometheus.yml").write_text(_prometheus_config(
                args.targets, f"{scheme}://127.0.0.1:{apps['peer']}", exporter_port,
                args.interval, path))
            exporter = procs.start([EXPORTER, f"--config.file={work / 'blackbox.yml'}",
                                    f"--web.listen-address=127.0.0.1:{exporter_port}"],
                                   work / "exporter.log", work)
            _wait(lambda: _listening(exporter_port) or exporter.poll() is not None, 20,
                  "the blackbox exporter")
            _alive(exporter, work / "exporter.log", "the blackbox exporter")
            prometheus = procs.start([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                                      f"--web.listen-address=127.0.0.1:{prom_port}",
                                      f"--storage.tsdb.path={work / 'tsdb'}"],
                                     work / "prometheus.log", work)
            peer = [("exporter", exporter), ("prometheus", prometheus)]
        for name, daemon in daemons.items():
            log = work / f"{name}.log"
            _wait(lambda d=daemon, f=log: "status=ready" in f.read_text(errors="replace")  # type: ignore[misc]
                  or d.poll() is not None, 120, f"{name} to be ready")
            _alive(daemon, log, name)
        time.sleep(args.warmup)
        for name, proc in peer:
            _alive(proc, work / f"{name}.log", name)
        pids = {name: d.pid for name, d in daemons.items()} | {name: p.pid for name, p in peer}
        load0 = os.getloadavg()[0]
        cpu0 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
        waited0 = {k: _run_delay(d.pid) for k, d in daemons.items()}
        served0 = {k: _served(port, scheme, go) for k, port in apps.items()}
        t0 = time.time()
        time.sleep(args.duration)
        t1 = time.time()
        cpu1 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
        waited1 = {k: _run_delay(d.pid) for k, d in daemons.items()}
        served1 = {k: _served(port, scheme, go) for k, port in apps.items()}
        load1 = os.getloadavg()[0]
        hwm = {k: _status_kb(d.pid, "VmHWM") * 1024 for k, d in daemons.items()}
    finally:
        procs.stop()
    used = {k: cpu1[k] - cpu0[k] for k in cpu0}
    runs = {k: served1[k] - served0[k] for k in served1}
    wall = t1 - t0
    out = {"expected_runs_s": args.targets / args.interval}
    for name in trees:
        lag_file = work / f"{name}-lags.txt"
        lags = [float(lag) for at, lag in (line.split() for line in
                                           lag_file.read_text().splitlines())
                if t0 <= float(at) <= t1] if lag_file.exists() else []
        out |= {f"{name}_load": (load0 + load1) / 2,
                f"{name}_ms": used[name] / max(runs[name], 1) * 1000,
                f"{name}_cpu": used[name] / wall, f"{name}_runs_s": runs[name] / wall,
                f"{name}_lag_p99": _quantile(lags, 0.99) if lags else float("nan"),
                f"{name}_lag_p50": _quantile(lags, 0.5) if lags else float("nan"),
                f"{name}_waited": (waited1[name] - waited0[name]) / wall,
                f"{name}_hwm": hwm[name]}
        pauses = [float(pause) for at, pause in (line.split() for line in
                                                 gc_file(lag_file).read_text().splitlines())
                  if t0 <= float(at) <= t1] if gc_file(lag_file).exists() else []
        out |= {f"{name}_gc": sum(pauses) / wall,
                f"{name}_gc_max": max(pauses, default=float("nan"))}
    if not no_peer:
        out |= {"exporter_ms": used["exporter"] / max(runs["peer"], 1) * 1000,
                "peer_ms": (used["exporter"] + used["prometheus"]) / max(runs["peer"], 1) * 1000,
                "exporter_cpu": used["exporter"] / wall, "peer_runs_s": runs["peer"] / wall}
        for name in trees:
            out[f"{name}_ratio"] = out[f"{name}_ms"] / out["exporter_ms"]
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _head(args: argparse.Namespace) -> list[str]:
    head = ["run"]
    for name in _trees(args):
        head += ["load", f"{name}/probe", "CPU", "runs/s", "lag p50", "lag p99", "waited",
                 "GC", "GC max", "peak RSS"]
        if not args.no_peer:
            head.append("ratio")
    if not args.no_peer:
        head += ["exporter/probe", "+prometheus", "peer runs/s"]
    return head


def _row(label: str, f: dict[str, float], args: argparse.Namespace) -> list[str]:
    row = [label]
    for name in _trees(args):
        row += [f"{f[name + '_load']:.1f}", f"{f[name + '_ms']:.2f} ms", f"{f[name + '_cpu']:.1%}",
                f"{f[name + '_runs_s']:.0f}/{f['expected_runs_s']:.0f}",
                f"{f[name + '_lag_p50'] * 1000:.1f} ms", f"{f[name + '_lag_p99'] * 1000:.1f} ms",
                f"{f[name + '_waited']:.0%}", f"{f[name + '_gc']:.1%}",
                f"{f[name + '_gc_max'] * 1000:.0f} ms", f"{f[name + '_hwm'] / 2**20:.0f} MiB"]
        if not args.no_peer:
            row.append(f"{f[name + '_ratio']:.2f}x")
    if not args.no_peer:
        row += [f"{f['exporter_ms']:.2f} ms", f"{f['peer_ms']:.2f} ms",
                f"{f['peer_runs_s']:.0f}/s"]
    return row


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_app":
        asyncio.run(_serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scheme", choices=("http", "https"), default="http")
    parser.add_argument("--targets", type=int, default=None,
                        help="targets (one probe each); default 600 for http, 100 for https")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3, help="the median is reported")
    parser.add_argument("--no-peer", action="store_true", help="rollbackd alone")
    parser.add_argument("--profile", help="write a cProfile of the daemon process here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--before", metavar="TREE",
                        help="also run rollbackd from this source tree (e.g. an export of an "
                             "older commit) in the same window, against its own app copy")
    parser.add_argument("--app", choices=("python", "go"), default="python",
                        help="the local app: a small asyncio server (default), or a `prometheus` "
                             "process answering /-/healthy (Go's net/http, http only): cheap "
                             "enough that thousands of probes measure the prober, not the app")
    parser.add_argument("--apart", action="store_true",
                        help="with --before: each tree in a window of its own, one after the "
                             "other in each run (for sizes where two daemons would starve each "
                             "other of CPU)")
    args = parser.parse_args()
    if args.app == "go" and args.scheme == "https":
        raise SystemExit("bench: --app go serves http only")
    if args.targets is None:
        args.targets = 600 if args.scheme == "http" else 100
    if not args.no_peer:
        for binary in (EXPORTER, PROMETHEUS):
            if not os.access(binary, os.X_OK):
                raise SystemExit(f"bench: {binary} is missing: run scripts/services as root")
    print(f"bench: {args.scheme}, {args.targets} targets every {args.interval:g}s, "
          f"{args.duration:g}s measured after {args.warmup:g}s, {args.runs} run(s)", flush=True)
    head = _head(args)
    rows, results = [head], []
    for i in range(args.runs):
        f = run_once(args)
        results.append(f)
        rows.append(_row(str(i + 1), f, args))
        print("  " + "  ".join(rows[-1]), flush=True)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    rows.append(_row("median", median, args))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print()
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if args.no_peer:
        return 0
    goal = GOALS[args.scheme]
    met = median["rollbackd_ratio"] <= goal
    print(f"\nrollbackd / exporter: {median['rollbackd_ratio']:.2f}x (goal <= {goal:g}x): "
          f"{'met' if met else 'MISSED'}. The exporter's column counts its own process only; "
          "+prometheus adds the Prometheus that schedules its probes.")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

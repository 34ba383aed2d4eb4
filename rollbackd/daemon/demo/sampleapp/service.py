"""Minimal pidfile process manager for the sample app, used as its start/stop/restart command."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT = 5.0
READY_TIMEOUT = 30.0
EXIT_NOT_RUNNING = 3  # LSB "program is not running"

# Popen objects of apps started by this process; kept so they are reaped (no zombies, no
# ResourceWarning) when start() and stop() run in the same long-lived process, e.g. tests.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: init reaps it


def is_app_process(pid: int) -> bool:
    """True if pid is a live, non-zombie process running an app.py (guards against pid reuse)."""
    _reap(pid)
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes()
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    return any(os.path.basename(arg) == b"app.py" for arg in cmdline.split(b"\0"))


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def running_pid(pidfile: Path) -> int | None:
    """The pid recorded in pidfile if that process is still the app, else None."""
    pid = _read_pid(pidfile)
    return pid if pid is not None and is_app_process(pid) else None


class NotReady(RuntimeError):
    """The app neither listens nor exited within READY_TIMEOUT."""


def start(app_dir: Path, pidfile: Path, log: Path, env: Mapping[str, str] | None = None) -> int:
    """Spawn DIR/app.py detached and return its pid once it listens (or exited: a version that
    cannot start), as `systemctl start` of a unit that reports readiness does."""
    app_dir, pidfile, log = Path(app_dir).resolve(), Path(pidfile), Path(log)
    if not (app_dir / "app.py").is_file():
        raise FileNotFoundError(f"no app.py in {app_dir}")
    existing = running_pid(pidfile)
    if existing is not None:
        return existing  # like `systemctl start` on an active unit: a no-op
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # log lines must reach the file before a crash
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_fh:
        child = subprocess.Popen(
            [sys.executable, str(app_dir / "app.py")],
            cwd=app_dir,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survive the caller and keep its signals/terminal away
        )
    _children[child.pid] = child
    _await_exec(child)
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{child.pid}\n")
    tmp.replace(pidfile)  # atomic, so status never reads a half-written pid
    _await_listening(child, child_env)
    return child.pid


def _await_listening(child: subprocess.Popen[bytes], env: Mapping[str, str],
                     timeout: float = READY_TIMEOUT) -> None:
    """Returning before the new version listens left a window in which whoever called
    `restart` (a deploy, a drill, the daemon's restart step) saw "connection refused" for as
    long as the app took to start, which on a busy machine is seconds."""
    port = env.get("SAMPLEAPP_PORT", "")
    if not port.isdigit():
        return  # the app refuses to start without one: nothing to wait for
    address = (env.get("SAMPLEAPP_HOST", "127.0.0.1"), int(port))
    deadline = time.monotonic() + timeout
    while child.poll() is None:
        try:
            with socket.create_connection(address, timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise NotReady(f"app.py (pid {child.pid}) not listening on "
                               f"{address[0]}:{address[1]} after {timeout:g}s") from None
            time.sleep(0.05)


def _await_exec(child: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Popen returns once the exec has begun, not once it is done: until then the child's
    cmdline reads empty, and a stop() right now would take it for another process and leave
    the app running, its pidfile gone."""
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if (Path("/proc") / str(child.pid) / "cmdline").read_bytes():
                return
        except OSError:
            return
        time.sleep(0.001)


def stop(pidfile: Path, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM then SIGKILL the app; True if something was running. Always removes pidfile."""
    pidfile = Path(pidfile)
    pid = running_pid(pidfile)
    stopped = False
    if pid is not None:
        stopped = True
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while is_app_process(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not is_app_process(pid):
                break
    pidfile.unlink(missing_ok=True)
    for child in list(_children):  # also reap apps that exited on their own (a broken deploy)
        _reap(child)
    return stopped


def restart(app_dir: Path, pidfile: Path, log: Path, env: Mapping[str, str] | None = None) -> int:
    stop(pidfile)
    return start(app_dir, pidfile, log, env)


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile=: keeps secrets out of argv and ps."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            env.update(_parse_env([line]))
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollbackd.daemon.demo.sampleapp.service", description=__doc__)
    parser.add_argument("action", choices=("start", "stop", "restart", "status"))
    parser.add_argument("--dir", required=True, type=Path, help="deployed app dir with app.py")
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path, help="stdout+stderr are appended here")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-file", type=Path, help="KEY=VALUE lines (secrets go here)")
    args = parser.parse_args(argv)
    try:
        env = read_env_file(args.env_file) if args.env_file else {}
        env.update(_parse_env(args.env))
    except (argparse.ArgumentTypeError, OSError) as exc:
        parser.error(str(exc))
    if args.action == "status":
        pid = running_pid(args.pidfile)
        print(f"running (pid {pid})" if pid else "not running")
        return 0 if pid else EXIT_NOT_RUNNING
    if args.action in ("stop", "restart"):
        print("stopped" if stop(args.pidfile) else "not running")
    if args.action in ("start", "restart"):
        try:
            pid = start(args.dir, args.pidfile, args.log, env)
        except (FileNotFoundError, NotReady) as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        print(f"started (pid {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several real daemons on one real PostgreSQL: databases, instances, a cuttable TCP proxy."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql.executors import PostgreSQLExecutor

from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, wait_for


@pytest.fixture
def pg_dsn(postgresql_proc: PostgreSQLExecutor) -> Iterator[str]:
    """A fresh, empty database of its own on the tests' PostgreSQL."""
    base = f"postgresql://postgres@{postgresql_proc.host}:{postgresql_proc.port}"
    name = f"rollbackd_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dsn_file(path: Path, dsn: str) -> Path:
    path.write_text(dsn + "\n")
    path.chmod(0o600)
    return path


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as db:
        return db.execute(sql, params).fetchall()  # type: ignore[arg-type]


class TcpProxy:
    """127.0.0.1:port -> PostgreSQL, in a thread; `cut()` drops every connection and refuses
    new ones (the network between one daemon and the database is gone), `mend()` ends that."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listen()

    def listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()  # linger 0: a reset, as when a link or a host goes away
            except OSError:
                pass

    def mend(self) -> None:
        self.listen()

    def close(self) -> None:
        self.cut()


@dataclass
class Instance:
    name: str
    daemon: DaemonProcess

    def status(self) -> dict[str, Any]:
        return dict(self.daemon.result("status"))

    def owner_of(self, target: str) -> str | None:
        for t in self.status()["targets"]:
            if t["target"] == target:
                return t.get("owner")
        return None


@dataclass
class Cluster:
    ws: Workspace
    smtp: SmtpSink
    dsn: str
    root: Path
    started: list[Instance]

    def config(self, name: str, dsn: str | None = None, takeover_after: str = "5s",
               restart_argv: list[str] | None = None, targets_extra: str = "") -> str:
        dsn_path = dsn_file(self.root / f"dsn-{name}", dsn or self.dsn)
        extra = (f'journal_dsn_file = "{dsn_path}"\ninstance = "{name}"\n'
                 f'takeover_after = "{takeover_after}"\n')
        return self.ws.config_toml(self.smtp.port, state_dir=self.root / name, extra=extra,
                                   restart_argv=restart_argv, targets_extra=targets_extra)

    def start(self, name: str, text: str) -> Instance:
        config = self.root / f"{name}.toml"
        config.write_text(text)
        from rollbackd.daemon.config import load_config

        cfg = load_config(config)
        d = DaemonProcess(config, cfg.daemon.socket, cfg.daemon.state_dir,
                          self.root / f"{name}.log")
        inst = Instance(name, d)
        self.started.append(inst)
        d.start()
        return inst

    def owner(self, target: str) -> str | None:
        """The instance whose live session holds the target's lock, from the database."""
        rows = query(self.dsn,
                     "SELECT l.owner FROM cluster_leases l JOIN pg_locks k ON k.locktype ="
                     " 'advisory' AND k.granted AND k.classid::bigint = %s AND k.objid::bigint"
                     " = l.id AND k.objsubid = 2 WHERE l.target = %s AND l.active_at IS NOT NULL",
                     (0x726F6C6C + 1, target))
        return rows[0]["owner"] if rows else None

    def wait_owner(self, target: str, timeout: float = 20.0,
                   among: tuple[str, ...] | None = None) -> str:
        def found() -> str | None:
            o = self.owner(target)
            return o if o and (among is None or o in among) else None
        logs = "\n".join(f"--- {i.name}\n{i.daemon.log_text()[-3000:]}" for i in self.started)
        return str(wait_for(found, timeout, f"an owner of {target}\n{logs}"))

    def instance(self, name: str) -> Instance:
        return next(i for i in self.started if i.name == name)


@pytest.fixture
def cluster(workspace: Workspace, smtp: SmtpSink, pg_dsn: str,
            tmp_path: Path) -> Iterator[Cluster]:
    workspace.start()
    c = Cluster(workspace, smtp, pg_dsn, tmp_path, [])
    yield c
    for inst in c.started:
        if inst.daemon.proc is not None and inst.daemon.proc.poll() is None:
            inst.daemon.stop()


HANGING_RESTART = """\
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()} {sys.argv[2]} {time.time():.3f}\\n")
time.sleep(120)
"""
"""A restart command that blocks: the rollback is caught in its restart step. It records its
pid, the instance that ran it and when."""


def hanging_restart(tmp_path: Path, instance: str) -> tuple[list[str], Path]:
    script, marker = tmp_path / "hang.py", tmp_path / "restart-runs"
    script.write_text(HANGING_RESTART)
    return [sys.executable, str(script), str(marker), instance], marker


def restart_runs(marker: Path) -> list[tuple[int, str, float]]:
    if not marker.exists():
        return []
    return [(int(p), who, float(at)) for p, who, at in
            (line.split() for line in marker.read_text().splitlines() if line)]


def kill_orphans(marker: Path) -> None:
    """What systemd does with the killed daemon's cgroup: its restart command dies too."""
    for pid, _, _ in restart_runs(marker):
        subprocess.run(["kill", "-9", str(pid)], capture_output=True, check=False)


def parse_log_time(line: str) -> datetime:
    """The timestamp of a daemon log line (local time) as an aware UTC datetime."""
    return datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").astimezone().astimezone(UTC)


def log_lines(inst: Instance, needle: str) -> list[str]:
    return [line for line in inst.daemon.log_text().splitlines() if needle in line]


__all__ = ["Cluster", "Instance", "TcpProxy", "dsn_file", "hanging_restart", "kill_orphans",
           "log_lines", "parse_log_time", "query", "restart_runs", "wait_for"]

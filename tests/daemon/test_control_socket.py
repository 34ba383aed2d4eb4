"""The control socket against one real `rollbackd run`: malformed, oversized, idle and
concurrent clients, peer credentials, the real rollbackctl console script, and the audit chain."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.control.ctl import request
from rollbackd.daemon.control.protocol import MAX_DEPTH
from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, wait_for

pytestmark = pytest.mark.e2e

ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")

# The interpreter lives where uid 65534 cannot exec it (/root is 0700), so the child starts as
# root, imports what it needs, drops to nobody:nogroup with no supplementary groups, and only
# then touches the socket: SO_PEERCRED sees uid 65534.
_DROP = f"""\
import json, locale, os, socket, sys
from rollbackd.daemon.control import ctl
ctl.build_parser().format_help()  # argparse and gettext import lazily; warm them as root
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
assert os.getuid() == {NOBODY} and os.getgroups() == []
"""
RAW_AS_NOBODY = _DROP + """\
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(10)
    s.connect(sys.argv[1])
    try:  # the daemon may refuse and close before reading: its reply is queued all the same
        s.sendall(b'{"cmd": "status", "args": {}}\\n')
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
print(data.decode())
"""
CTL_AS_NOBODY = _DROP + """\
sys.argv[0] = "rollbackctl"
sys.exit(ctl.main())
"""


@dataclass
class ControlEnv:
    daemon: DaemonProcess
    metrics_url: str
    # (cmd, uid, pid, outcome) of every request the daemon must have audited.
    expected_audit: list[tuple[str, int, int, str]] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.daemon.socket)

    def probe_runs(self) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in
                   re.finditer(r"^rollbackd_probe_runs_total\{[^}]*\} (\S+)$", text, re.M))

    def status(self) -> dict[str, Any]:
        reply = self.daemon.ctl("status")
        assert reply["ok"], reply
        self.expected_audit.append(("status", os.getuid(), os.getpid(), "ok"))
        return reply["result"]

    def assert_healthy(self) -> None:
        """The daemon is alive, answers `status`, and its probes keep running."""
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None, \
            self.daemon.log_text()
        before = self.probe_runs()
        assert self.status()["pid"] == self.daemon.proc.pid
        wait_for(lambda: self.probe_runs() > before, 10, "probe runs to keep rising")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlEnv]:
    root = tmp_path_factory.mktemp("control")
    ws = Workspace.create(root / "ws")  # the app is never started: the target just fails
    # pytest's tmp dirs are 0700; uid 65534 must be able to reach the socket's directory.
    state = Path(tempfile.mkdtemp(prefix="rollbackd-ctl-"))
    os.chmod(state, 0o755)
    smtp = SmtpSink()
    smtp.controller.start()
    metrics = f"127.0.0.1:{free_port()}"
    text = ws.config_toml(smtp.port, state_dir=state)
    assert 'metrics_address = ""' in text
    config = root / "rollbackd.toml"
    # Metrics on: rollbackd_probe_runs_total shows the probe loop is still going.
    # test_hooks: `freeze` blocks the daemon's loop to fill its listen backlog on purpose.
    text = text.replace('metrics_address = ""', f'metrics_address = "{metrics}"\ntest_hooks = true')
    config.write_text(text)
    d = DaemonProcess(config, state / "control.sock", state, root / "daemon.log")
    try:
        d.start()
        e = ControlEnv(d, f"http://{metrics}/metrics")
        wait_for(lambda: e.probe_runs() > 0, 10, "first probe run")
        yield e
    finally:
        if d.proc is not None:
            d.stop()
        smtp.controller.stop()
        shutil.rmtree(state, ignore_errors=True)


def raw_exchange(path: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read up to the first newline (or until the daemon closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        # The daemon may answer and close before it has read all of an oversized request.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        return _read_line(s)


def _read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:  # closed with our unread bytes still queued
            break
        if not chunk:
            break
        buf += chunk
    return buf


def raw_request(path: str, data: bytes) -> dict[str, Any]:
    buf = raw_exchange(path, data)
    assert buf.endswith(b"\n") and buf.count(b"\n") == 1, buf[:200]
    reply: dict[str, Any] = json.loads(buf)
    return reply


# -- malformed requests ------------------------------------------------------------------------

BAD_REQUESTS = {
    "not JSON": b"status please\n",
    "not UTF-8": b"\xff\xfe{}\n",
    "empty line": b"\n",
    "JSON array": b'["status"]\n',
    "JSON string": b'"status"\n',
    "JSON number": b"42\n",
    "JSON null": b"null\n",
    "missing cmd": b'{"args": {}}\n',
    "cmd not a string": b'{"cmd": 5}\n',
    "cmd null": b'{"cmd": null, "args": {}}\n',
    "args a list": b'{"cmd": "status", "args": [1, 2]}\n',
    "args a string": b'{"cmd": "status", "args": "verbose"}\n',
    "args a number": b'{"cmd": "status", "args": 3}\n',
    "args true": b'{"cmd": "status", "args": true}\n',
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_request_is_refused_and_the_daemon_carries_on(env: ControlEnv,
                                                                data: bytes) -> None:
    reply = raw_request(env.socket, data)
    assert reply["ok"] is False
    assert reply["code"] == "bad_request"
    assert reply["error"]
    env.assert_healthy()


# Falsy non-objects slip through `req.get("args") or {}` and run the command with no args.
FALSY_ARGS = {
    "args an empty list": b'{"cmd": "status", "args": []}\n',
    "args zero": b'{"cmd": "status", "args": 0}\n',
    "args an empty string": b'{"cmd": "status", "args": ""}\n',
    "args false": b'{"cmd": "status", "args": false}\n',
}


@pytest.mark.parametrize("data", FALSY_ARGS.values(), ids=FALSY_ARGS.keys())
def test_falsy_args_that_are_not_an_object_are_refused(env: ControlEnv, data: bytes) -> None:
    reply = raw_request(env.socket, data)
    if reply.get("ok"):
        env.expected_audit.append(("status", os.getuid(), os.getpid(), "ok"))
    assert reply == {"ok": False, "code": "bad_request", "error": "args must be an object"}


def test_deeply_nested_json_gets_a_bad_request_reply(env: ControlEnv) -> None:
    try:
        buf = raw_exchange(env.socket, b"[" * 50_000 + b"\n")
        assert buf, "the daemon closed the connection without a reply"
        assert json.loads(buf)["code"] == "bad_request"
    finally:
        env.assert_healthy()


def nested_args(depth: int) -> bytes:
    """A status request whose args nest `depth` levels deep, counting args itself."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return b'{"cmd": "status", "args": {"x": ' + inner.encode() + b"}}\n"


@pytest.mark.parametrize("depth", [100, 500, 980, 5000])
def test_a_request_nested_too_deep_is_bad_request_at_any_depth(env: ControlEnv,
                                                               depth: int) -> None:
    # 500-980 once parsed, then blew the audit's recursive redaction: `internal`, no audit row.
    reply = raw_request(env.socket, nested_args(depth))
    assert reply == {"ok": False, "code": "bad_request",
                     "error": f"request nested deeper than {MAX_DEPTH} levels of arrays and "
                              "objects"}
    env.assert_healthy()


def test_a_request_nested_as_deep_as_allowed_runs(env: ControlEnv) -> None:
    # The request object is level 1, args level 2: args may hold MAX_DEPTH - 2 more levels.
    reply = raw_request(env.socket, nested_args(MAX_DEPTH - 1))
    assert reply["ok"] is True, reply
    env.expected_audit.append(("status", os.getuid(), os.getpid(), "ok"))
    reply = raw_request(env.socket, nested_args(MAX_DEPTH))
    assert reply["code"] == "bad_request", reply


def test_unknown_command(env: ControlEnv) -> None:
    reply = raw_request(env.socket, b'{"cmd": "self-destruct", "args": {"now": true}}\n')
    assert reply["ok"] is False
    assert reply["code"] == "unknown_command"
    assert "self-destruct" in reply["error"]
    env.expected_audit.append(("self-destruct", os.getuid(), os.getpid(), "unknown_command"))
    env.assert_healthy()


def test_request_without_args_and_with_a_version_runs(env: ControlEnv) -> None:
    reply = raw_request(env.socket, b'{"v": 1, "cmd": "help"}\n')
    assert reply["ok"] is True
    assert {"status", "incidents", "show", "ack", "reload", "help"} <= set(reply["result"])
    env.expected_audit.append(("help", os.getuid(), os.getpid(), "ok"))


def test_show_bad_id_is_bad_args(env: ControlEnv) -> None:
    for args in ({}, {"id": "seven"}, {"id": None}, {"id": [1]}):
        reply = env.daemon.ctl("show", **args)
        assert reply["ok"] is False and reply["code"] == "bad_args", (args, reply)
        env.expected_audit.append(("show", os.getuid(), os.getpid(), "error:bad_args"))


def test_show_huge_id_is_refused_cleanly_and_audited(env: ControlEnv) -> None:
    reply = env.daemon.ctl("show", id=10**20)
    with closing(env.daemon.db()) as db:
        rows = db.execute("SELECT outcome FROM audit WHERE cmd = 'show' AND args = ?",
                          (json.dumps({"id": 10**20}),)).fetchall()
    env.assert_healthy()
    assert reply["ok"] is False
    assert reply["code"] in ("bad_args", "not_found"), reply
    assert len(rows) == 1


def test_too_large_request(env: ControlEnv) -> None:
    line = json.dumps({"cmd": "status", "args": {"pad": "x" * (100 * 1024)}}).encode() + b"\n"
    assert len(line) > 100 * 1024
    reply = raw_request(env.socket, line)
    assert reply["ok"] is False
    assert reply["code"] == "too_large"
    env.assert_healthy()


def test_a_large_request_under_the_limit_is_served(env: ControlEnv) -> None:
    line = json.dumps({"cmd": "status", "args": {"pad": "x" * (60 * 1024)}}).encode() + b"\n"
    reply = raw_request(env.socket, line)
    assert reply["ok"] is True
    env.expected_audit.append(("status", os.getuid(), os.getpid(), "ok"))


def test_idle_clients_time_out_without_blocking_others(env: ControlEnv) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as partial:
        started = time.monotonic()
        silent.connect(env.socket)
        partial.connect(env.socket)
        partial.sendall(b'{"cmd": "sta')  # never finishes its line
        # While both hang, everyone else is served.
        for _ in range(3):
            env.status()
        assert time.monotonic() - started < 3
        for s in (silent, partial):
            s.settimeout(10)
            buf = _read_line(s)
            elapsed = time.monotonic() - started
            assert elapsed < 7, f"idle client held for {elapsed:.1f}s"
            if buf:  # either a timeout error, or the daemon just closes
                reply = json.loads(buf)
                assert reply["ok"] is False and reply["code"] == "timeout", reply
            assert s.recv(1) == b""  # and the connection is closed
    env.assert_healthy()


def request_waiting_for_accept(path: str, cmd: str, timeout: float = 30.0) -> dict[str, Any]:
    """Like ctl.request, but connects in blocking mode: a full listen backlog makes a Unix
    connect wait for the daemon instead of failing at once with EAGAIN. Beyond the daemon's
    max_control_connections it answers `busy`: tried again, as rollbackctl does."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.settimeout(timeout)
            with contextlib.suppress(BrokenPipeError):  # refused before it read our line
                s.sendall(json.dumps({"cmd": cmd, "args": {}}).encode() + b"\n")
            line = _read_line(s)
        reply: dict[str, Any] = json.loads(line) if line else {"code": "busy"}
        if reply.get("code") != "busy" or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_200_concurrent_status_clients(env: ControlEnv) -> None:
    n = 200
    barrier = threading.Barrier(n, timeout=30)

    def one(_: int) -> dict[str, Any]:
        barrier.wait()
        return request_waiting_for_accept(env.socket, "status")

    with ThreadPoolExecutor(max_workers=n) as pool:
        replies = list(pool.map(one, range(n)))
    assert len(replies) == n
    bad = [r for r in replies if not r.get("ok")]
    assert not bad, bad[:3]
    assert {r["result"]["pid"] for r in replies} == {env.daemon.proc.pid}
    env.expected_audit.extend([("status", os.getuid(), os.getpid(), "ok")] * n)
    env.assert_healthy()


def test_rollbackctl_client_waits_while_the_daemon_is_briefly_busy(env: ControlEnv) -> None:
    freezer = ThreadPoolExecutor(max_workers=1)
    frozen = freezer.submit(request, env.socket, "freeze", {"seconds": 3})
    fillers: list[socket.socket] = []
    try:
        # Queue connections until the kernel refuses one: the loop is frozen, backlog full.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(env.socket)
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.fail("the listen backlog never filled up")
        reply = request(env.socket, "status", {}, timeout=30)
        assert reply["ok"], reply
    finally:
        for s in fillers:
            s.close()
        assert frozen.result(timeout=30)["ok"]
        freezer.shutdown()
        env.expected_audit.append(("freeze", os.getuid(), os.getpid(), "ok"))
        env.assert_healthy()


# -- peer credentials ----------------------------------------------------------------------------

def _as_nobody(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          timeout=30, cwd=str(Path(__file__).resolve().parents[2]))


@needs_root
def test_a_peer_whose_uid_is_not_allowed_is_forbidden(env: ControlEnv) -> None:
    assert NOBODY not in (0, os.getuid())
    refused_before = _refused_rows(env)
    os.chmod(env.socket, 0o666)  # so nobody can connect at all: the uid check must stop it
    try:
        out = _as_nobody(RAW_AS_NOBODY, env.socket)
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        assert reply["ok"] is False
        assert reply["code"] == "forbidden"
        assert str(NOBODY) in reply["error"]
    finally:
        os.chmod(env.socket, 0o660)
    with closing(env.daemon.db()) as db:
        ran = db.execute("SELECT COUNT(*) FROM audit WHERE uid = ? AND outcome = 'ok'",
                         (NOBODY,)).fetchone()[0]
    assert ran == 0
    # The refusal itself is audited: who asked, and for what (never the arguments).
    (row,) = _refused_rows(env)[len(refused_before):]
    assert (row["cmd"], row["args"], row["outcome"]) == ("status", "{}", "error:forbidden")
    env.assert_healthy()


def _refused_rows(env: ControlEnv) -> list[Any]:
    with closing(env.daemon.db()) as db:
        return db.execute("SELECT * FROM audit WHERE uid = ? ORDER BY id", (NOBODY,)).fetchall()


# rollbackctl as a client that is a little slow between connect() and send(): the daemon has
# already answered "forbidden" and closed, so sendall() fails with EPIPE.
SLOW_CTL_AS_NOBODY = CTL_AS_NOBODY.replace("sys.exit(ctl.main())", """\
import time
_connect = socket.socket.connect
def _slow_connect(self, address):
    _connect(self, address)
    time.sleep(0.3)
socket.socket.connect = _slow_connect
sys.exit(ctl.main())""")


@needs_root
def test_rollbackctl_of_a_forbidden_uid_reports_forbidden(env: ControlEnv) -> None:
    os.chmod(env.socket, 0o666)
    try:
        out = _as_nobody(SLOW_CTL_AS_NOBODY, "--socket", env.socket, "status")
    finally:
        os.chmod(env.socket, 0o660)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "forbidden" in out.stderr


@needs_root
def test_rollbackctl_without_socket_permission_says_join_the_group(env: ControlEnv) -> None:
    assert os.stat(env.socket).st_mode & 0o777 == 0o660
    out = _as_nobody(CTL_AS_NOBODY, "--socket", env.socket, "status")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "permission denied" in out.stderr
    assert "group" in out.stderr
    assert "Traceback" not in out.stderr


# -- the real rollbackctl console script --------------------------------------------------------

def rollbackctl(*argv: str) -> tuple[int, int, str, str]:
    """Run the installed console script; returns (pid, exit code, stdout, stderr)."""
    with subprocess.Popen([ROLLBACKCTL, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        out, err = p.communicate(timeout=30)
    return p.pid, p.returncode, out, err


def test_rollbackctl_status(env: ControlEnv) -> None:
    pid, rc, out, err = rollbackctl("--socket", env.socket, "status")
    assert rc == 0, err
    assert f"rollbackd pid {env.daemon.proc.pid}" in out
    assert "grading" in out
    env.expected_audit.append(("status", os.getuid(), pid, "ok"))


def test_rollbackctl_json_status(env: ControlEnv) -> None:
    pid, rc, out, err = rollbackctl("--socket", env.socket, "--json", "status")
    assert rc == 0, err
    result = json.loads(out)
    assert result["pid"] == env.daemon.proc.pid
    assert [t["target"] for t in result["targets"]] == ["grading"]
    env.expected_audit.append(("status", os.getuid(), pid, "ok"))


def test_rollbackctl_show_missing_incident_is_refused(env: ControlEnv) -> None:
    pid, rc, out, err = rollbackctl("--socket", env.socket, "show", "999")
    assert rc == 1, (out, err)
    assert "not_found" in err
    assert out == ""
    env.expected_audit.append(("show", os.getuid(), pid, "error:not_found"))


@pytest.mark.parametrize("argv", [["frobnicate"], ["show", "abc"], ["show"], []],
                         ids=["unknown subcommand", "non-numeric id", "missing id", "no command"])
def test_rollbackctl_usage_errors(env: ControlEnv, argv: list[str]) -> None:
    _, rc, out, err = rollbackctl("--socket", env.socket, *argv)
    assert rc == 2, (out, err)
    assert "usage:" in err


def test_rollbackctl_missing_socket(tmp_path: Path) -> None:
    _, rc, out, err = rollbackctl("--socket", str(tmp_path / "nope.sock"), "status")
    assert rc == 3, (out, err)
    assert "no control socket" in err
    assert "Traceback" not in err


def test_rollbackctl_socket_nobody_listens_on() -> None:
    d = tempfile.mkdtemp(prefix="rollbackd-dead-")
    path = os.path.join(d, "control.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path)  # bound, never listening: connect is refused
            _, rc, out, err = rollbackctl("--socket", path, "status")
        assert rc == 3, (out, err)
        assert "connection refused" in err
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- audit ---------------------------------------------------------------------------------------

def _row_hash(r: Any, key: bytes) -> str:
    """HMAC-SHA256 under the daemon's audit key (state_dir/audit.key, made at first start)."""
    return hmac.new(key, json.dumps(
        [r["prev_hash"], r["at"], r["uid"], r["pid"], r["cmd"], r["args"], r["outcome"],
         r["key_id"]]).encode(), hashlib.sha256).hexdigest()


def test_every_command_is_audited_in_an_unbroken_hash_chain(env: ControlEnv) -> None:
    # Runs last in this module: it checks the commands of the tests above, plus its own.
    assert raw_request(env.socket, b'{"cmd": "no-such-thing", "args": {"x": 1}}\n')["code"] \
        == "unknown_command"
    env.expected_audit.append(("no-such-thing", os.getuid(), os.getpid(), "unknown_command"))
    pid, rc, _, err = rollbackctl("--socket", env.socket, "incidents", "--limit", "5")
    assert rc == 0, err
    env.expected_audit.append(("incidents", os.getuid(), pid, "ok"))

    with closing(env.daemon.db()) as db:
        rows = db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    assert rows
    key = (env.daemon.state_dir / "audit.key").read_bytes().strip()
    assert rows[0]["id"] == 1 and rows[0]["prev_hash"] == ""
    for prev, row in zip([None, *rows], rows, strict=False):
        assert row["uid"] is not None and row["pid"] is not None, dict(row)
        if prev is not None:
            assert row["prev_hash"] == prev["hash"], (dict(prev), dict(row))
        assert row["hash"] == _row_hash(row, key), dict(row)
        json.loads(row["args"])

    seen = Counter((r["cmd"], r["uid"], r["pid"], r["outcome"]) for r in rows)
    wanted = Counter(env.expected_audit)
    missing = {k: (n, seen[k]) for k, n in wanted.items() if seen[k] < n}
    assert not missing, f"(expected, found) audit rows: {missing}"
    # The unknown command's args are kept as sent.
    assert any(r["cmd"] == "no-such-thing" and json.loads(r["args"]) == {"x": 1} for r in rows)
    # A tampered row breaks the chain where it was changed.
    forged = dict(rows[-1]) | {"outcome": "ok" if rows[-1]["outcome"] != "ok" else "error"}
    assert _row_hash(forged, key) != rows[-1]["hash"]

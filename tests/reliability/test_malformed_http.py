"""Malformed HTTP from the target app: a server that trickles bytes, huge bodies and headers,
invalid JSON, lies about lengths, speaks no HTTP, or redirects to other hosts.

Probes run as the daemon runs them (monitor.run_probe, with the probe's timeout): each case is a
clear FAIL (or ERROR) with a sentence, within the timeout; redirects are never followed (a
listener on another loopback address counts the connections it gets: none). Then one real
daemon watches a target per case at once and keeps serving. (tests/probes/ fuzz the answers of
a well-behaved server; these are the ones that misbehave at the byte level.)
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.daemon.monitor import run_probe
from rollbackd.probes.http_health import HttpHealthProbe, HttpHealthSettings
from rollbackd.probes.login import LoginProbe, LoginSettings
from rollbackd.probes.observation import Status
from tests.conftest import DaemonProcess, SmtpSink, wait_for

TIMEOUT = 1.0
OTHER_HOST = "127.0.0.2"  # another host as far as a redirect goes, still on loopback


class Listener:
    """Counts the connections made to OTHER_HOST: a followed redirect would land here."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((OTHER_HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


class Misbehaving(socketserver.ThreadingTCPServer):
    """An HTTP server that misbehaves by path: /<case>."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, other_port: int) -> None:
        self.other_port = other_port
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def response(status: str, body: bytes, extra: str = "", ctype: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body


class Handler(socketserver.BaseRequestHandler):
    server: Misbehaving

    def handle(self) -> None:
        s: socket.socket = self.request
        s.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    return
                head += chunk
            # Read the whole request (a login's body too): closing on unread bytes is a reset.
            top, _, body = head.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in top.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length and (chunk := s.recv(4096)):
                body += chunk
            case = head.split(b" ", 2)[1].decode().strip("/")
            getattr(self, case.replace("-", "_"))(s)
        except OSError:
            pass  # the probe gave up and closed: that is the point

    def _trickle(self, s: socket.socket, data: bytes, every: float) -> None:
        for byte in data:
            if self.server.stopping.wait(every):
                return
            s.sendall(bytes([byte]))

    def trickle_head(self, s: socket.socket) -> None:
        self._trickle(s, response("200 OK", b'{"status": "ok"}'), 0.2)

    def trickle_body(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n")
        self._trickle(s, b'{"status": "ok", "pad": "' + b"x" * 99_970 + b'"}', 0.1)

    def huge_body(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200000000\r\n\r\n")
        block = b"[" * 65536
        for _ in range(3000):  # 200 MB if anyone read it all
            if self.server.stopping.is_set():
                return
            s.sendall(block)

    def endless_chunks(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        while not self.server.stopping.is_set():
            s.sendall(b"10000\r\n" + b"{" * 65536 + b"\r\n")

    def huge_header(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 200_000 + b"\r\n\r\n")

    def many_headers(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n")

    def invalid_json(self, s: socket.socket) -> None:
        s.sendall(response("200 OK", b'{"status": ok, "version": '))

    def deep_json(self, s: socket.socket) -> None:
        s.sendall(response("200 OK", b"[" * 200_000))

    def short_body(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"status\": \"ok\"}")

    def garbage(self, s: socket.socket) -> None:
        s.sendall(b"\x00\xff SSH-2.0-OpenSSH_9.6\r\n\r\nnot http at all\r\n")

    def hang_up(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 200 O")

    def bad_status(self, s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n")

    def redirect_other_host(self, s: socket.socket) -> None:
        where = f"http://{OTHER_HOST}:{self.server.other_port}/health"
        s.sendall(response("302 Found", b"", f"Location: {where}\r\n"))

    def redirect_localhost(self, s: socket.socket) -> None:
        where = f"http://localhost:{self.server.other_port}/health"
        s.sendall(response("301 Moved Permanently", b"", f"Location: {where}\r\n"))

    def redirect_307(self, s: socket.socket) -> None:
        where = f"http://{OTHER_HOST}:{self.server.other_port}/api/auth/login"
        s.sendall(response("307 Temporary Redirect", b"", f"Location: {where}\r\n"))

    def redirect_self_loop(self, s: socket.socket) -> None:
        s.sendall(response("302 Found", b"", "Location: /redirect-self-loop\r\n"))


CASES = ["trickle-head", "trickle-body", "huge-body", "endless-chunks", "huge-header",
         "many-headers", "invalid-json", "deep-json", "short-body", "garbage", "hang-up",
         "bad-status", "redirect-other-host", "redirect-localhost", "redirect-307",
         "redirect-self-loop"]

LOGIN_READS_NO_BODY = {"huge-body", "endless-chunks", "invalid-json", "deep-json"}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Misbehaving, Listener]]:
    listener = Listener()
    server = Misbehaving(listener.port)
    yield server, listener
    server.stop()
    listener.close()


def health(url: str) -> HttpHealthProbe:
    return HttpHealthProbe("health", HttpHealthSettings(
        url=url, timeout=TIMEOUT, expect_json={"status": "ok"}, version_field="version"))


def login(url: str, password_file: Path) -> LoginProbe:
    return LoginProbe("login", LoginSettings(url=url, timeout=TIMEOUT, email="probe@example.org",
                                             password_file=password_file))


@pytest.mark.parametrize("case", CASES)
def test_each_misbehaviour_is_a_clear_failure_within_the_timeout(
        servers: tuple[Misbehaving, Listener], tmp_path: Path, case: str) -> None:
    server, listener = servers
    password = tmp_path / "pw"
    password.write_text("probe-password-123")
    for probe in (health(f"{server.url}/{case}"), login(f"{server.url}/{case}", password)):
        started = time.monotonic()
        obs = asyncio.run(run_probe(probe, TIMEOUT))
        took = time.monotonic() - started
        assert took < TIMEOUT + 0.75, (probe.kind, took, obs.detail)
        if probe.kind == "login" and case in LOGIN_READS_NO_BODY:
            # A login is judged by its status line: a 200 with any body is a login that worked.
            assert obs.status is Status.OK and "HTTP 200" in obs.detail, obs
            continue
        assert obs.status in (Status.FAIL, Status.ERROR), (probe.kind, obs)
        assert obs.symptom is not None and obs.detail and "\n" not in obs.detail
        assert "probe-password-123" not in obs.detail
    assert listener.connections == 0  # no redirect was followed to the other host


def test_redirect_details_say_what_was_answered(servers: tuple[Misbehaving, Listener]) -> None:
    server, _ = servers
    obs = asyncio.run(run_probe(health(f"{server.url}/redirect-other-host"), TIMEOUT))
    assert "HTTP 302" in obs.detail and "expected 200" in obs.detail


@pytest.mark.e2e
def test_the_daemon_watches_every_misbehaving_target_and_keeps_serving(
        servers: tuple[Misbehaving, Listener], smtp: SmtpSink, tmp_path: Path) -> None:
    server, listener = servers
    state = tmp_path / "state"
    targets = "".join(f"""
[targets.{case.replace("-", "_")}.probes.health]
kind = "http_health"
url = "{server.url}/{case}"
interval = "500ms"
timeout = "{TIMEOUT:g}s"
failure_threshold = 2
expect_json = {{status = "ok"}}
""" for case in CASES)
    config = tmp_path / "rollbackd.toml"
    config.write_text(f"""
[daemon]
state_dir = "{state}"
socket = "{state / 'control.sock'}"
metrics_address = ""

[smtp]
host = "127.0.0.1"
port = {smtp.port}

[contacts.oncall]
emails = ["oncall@example.com"]
{targets}""")
    d = DaemonProcess(config, state / "control.sock", state, tmp_path / "daemon.log").start()
    try:
        def failing() -> set[str]:
            return {t["target"] for t in d.result("status")["targets"]
                    if t["probes"]["health"] == "failing"}

        expected = {c.replace("-", "_") for c in CASES}
        wait_for(lambda: failing() == expected, 20, f"every target failing: {failing()}")
        # Each is an incident (nothing to roll back to: escalated), and the socket answers.
        wait_for(lambda: len(d.result("incidents")) == len(CASES), 20, "an incident each")
        for _ in range(20):
            assert d.result("status")
        assert d.proc is not None and d.proc.poll() is None
        assert listener.connections == 0
    finally:
        assert d.stop() == 0

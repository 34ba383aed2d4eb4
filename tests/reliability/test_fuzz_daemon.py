"""Fuzzing one real `rollbackd run` through its two doors: the control socket (random bytes,
hypothesis-made JSON requests for every command with random arguments) and the Alertmanager
webhook (random bodies, mutated notifications, random headers and raw requests).

Every case gets one clear answer: a JSON reply `ok` or an error with a code (never `internal`:
that would be a command that crashed on its arguments), an HTTP 200 or 4xx with a JSON error
(never 5xx). Afterwards the daemon is the same process, still serving, still probing, and its
audit chain verifies. The fixed malformed cases live in tests/daemon/test_control_socket.py and
tests/prometheus/test_webhook.py; this file throws what they do not.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rollbackd.daemon.control.commands.registry import COMMANDS
from rollbackd.daemon.demo.workspace import Workspace, free_port
from tests.conftest import DaemonProcess, SmtpSink, wait_for
from tests.prometheus.alertmanager import LATENCY, alert, notification

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-alertmanager-token-0123456789"
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@dataclass
class Env:
    daemon: DaemonProcess
    metrics: str
    webhook: str
    pid: int

    def alive(self) -> None:
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None, \
            self.daemon.log_text()[-3000:]
        assert self.daemon.proc.pid == self.pid

    def sample(self, name: str, labels: str = r"(?:\{[^}]*\})?") -> float:
        """The sum of a metric's samples (over labels matching `labels`)."""
        with urllib.request.urlopen(self.metrics, timeout=5) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in
                   re.finditer(rf"^{name}{labels} (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("fuzz")
    ws = Workspace.create(root / "ws")
    ws.start()
    state = Path(tempfile.mkdtemp(prefix="rollbackd-fuzz-"))
    smtp = SmtpSink()
    smtp.controller.start()
    metrics, hook = free_port(), free_port()
    (root / "token").write_text(TOKEN + "\n")
    text = ws.config_toml(smtp.port, state_dir=state).replace(
        'metrics_address = ""', f'metrics_address = "127.0.0.1:{metrics}"')
    text += f"""
[targets.grading.probes.latency]
kind = "alertmanager"
match = {{alertname = "GradingHighLatency"}}
symptom = "slow"
interval = "1s"

[alerts]
listen = "127.0.0.1:{hook}"
token_file = "{root / 'token'}"
"""
    config = root / "rollbackd.toml"
    config.write_text(text)
    d = DaemonProcess(config, state / "control.sock", state, root / "daemon.log")
    try:
        d.start()
        assert d.proc is not None
        e = Env(d, f"http://127.0.0.1:{metrics}/metrics", f"http://127.0.0.1:{hook}/webhook",
                d.proc.pid)
        wait_for(lambda: e.sample("rollbackd_probe_runs_total") > 0, 10, "probing")
        yield e
    finally:
        d.stop()
        ws.stop()
        smtp.controller.stop()
        shutil.rmtree(state, ignore_errors=True)


def exchange(path: str, data: bytes, timeout: float = 15.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # no more is coming: a partial line is all there is
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return buf


def assert_one_clear_reply(raw: bytes) -> dict[str, Any]:
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw[:300]
    reply: dict[str, Any] = json.loads(raw)
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert isinstance(reply["code"], str) and reply["code"]
        assert isinstance(reply["error"], str) and reply["error"].strip()
        # A command that crashed on its arguments: a bug, even though the daemon survived it.
        assert reply["code"] != "internal", reply
    return reply


# -- the control socket ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.sampled_from(["grading", "nope", "1", "-1", "1h", "0s", "-5m",
                                               "deployment_rollback", "database", "all", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
ARG_NAMES = ["id", "target", "reason", "for", "to", "force", "dry_run", "wait", "kind", "limit",
             "verify", "action", "plan", "version", "email", "seconds", "report", "password",
             "until", "all", "by", "name"]
commands = st.sampled_from(sorted(COMMANDS)) | st.text(max_size=20)
requests = st.fixed_dictionaries(
    {"cmd": commands},
    optional={"args": st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=10),
                                      json_values, max_size=4) | json_values,
              "v": st.just(1) | json_values})


@FUZZ
@given(request=requests)
def test_control_socket_hypothesis_requests(env: Env, request: dict[str, Any]) -> None:
    if request["cmd"] == "approve":  # the only fuzzable command that would act on the app
        request["args"] = {}
    raw = exchange(str(env.daemon.socket), json.dumps(request).encode() + b"\n")
    assert_one_clear_reply(raw)
    env.alive()


@FUZZ
@given(data=st.binary(max_size=3000) | st.binary(max_size=200).map(lambda b: b + b"\n"))
def test_control_socket_random_bytes(env: Env, data: bytes) -> None:
    reply = assert_one_clear_reply(exchange(str(env.daemon.socket), data))
    assert reply["ok"] is False or data.lstrip().startswith(b"{")
    env.alive()


# -- the Alertmanager webhook -----------------------------------------------------------------

@st.composite
def mutated_notifications(draw: st.DrawFn) -> bytes:
    """A real notification with 1-3 values somewhere in it replaced by random JSON."""
    doc: Any = notification(alert(LATENCY, summary="p95 734 ms"))
    for _ in range(draw(st.integers(1, 3))):
        node, keys = doc, []
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node) if isinstance(node, dict)
                                       else list(range(len(node)))))
            keys.append(key)
            node = node[key]
        if not keys:
            doc = draw(json_values)
            break
        parent = doc
        for k in keys[:-1]:
            parent = parent[k]
        parent[keys[-1]] = draw(json_values)
    return json.dumps(doc).encode()


bodies = st.binary(max_size=2000) | mutated_notifications()
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
                      max_size=40)
# What an HTTP client sends at all (no edge whitespace); raw requests below send anything.
client_text = header_text.map(str.strip)
tokens = st.sampled_from([f"Bearer {TOKEN}", f"bearer  {TOKEN}", "Bearer", "", f"Basic {TOKEN}",
                          f"Bearer {TOKEN}x", f"BEARER {TOKEN}"]) | client_text
OK_CODES = {200, 400, 401, 404, 405, 408, 411, 413}


@FUZZ
@given(body=bodies, auth=tokens,
       extra=st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True), client_text,
                             max_size=3),
       ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; x"]))
def test_webhook_random_bodies_and_headers(env: Env, body: bytes, auth: str,
                                           extra: dict[str, str], ctype: str) -> None:
    headers = [(k.encode(), v.encode("latin-1"))
               for k, v in {"Authorization": auth, "Content-Type": ctype, **extra}.items()]
    r = httpx.post(env.webhook, content=body, headers=headers, timeout=15, trust_env=False)
    assert r.status_code in OK_CODES, (r.status_code, r.text)
    doc = r.json()
    assert (doc.get("status") == "ok") if r.status_code == 200 else doc["error"]
    env.alive()


# Header values a parser trips on: signs, separators, huge, and digits that are not ASCII.
tricky = st.sampled_from(["-1", "+5", "1_0", " 5", "0x10", "1e3", "99999999999999999999",
                          "\u00b2", "\u00b9\u00b3", "5, 5", "chunked", f"Bearer {TOKEN}"])
raw_heads = st.lists(
    st.tuples(st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding",
                               "Authorization", "Host", "X-Any", " Content-Length", "A b"]),
              header_text | tricky), max_size=5)


@FUZZ
@given(line=st.sampled_from(["POST /webhook HTTP/1.1"] * 4 + [
           "GET /webhook HTTP/1.1", "POST /webhook?x=1 HTTP/1.0", "POST /other HTTP/1.1",
           "POST /webhook HTTP/2", "POST  /webhook HTTP/1.1", "POST"]) | header_text,
       length=st.one_of(tricky, tricky, st.none(), st.integers(0, 400).map(str), header_text),
       heads=raw_heads, body=st.binary(max_size=300), junk=st.binary(max_size=100) | st.just(b""))
# Found by this test: a Content-Length of digits that are not ASCII ("²".isdigit()) was a 500.
@example(line="POST /webhook HTTP/1.1", length="\u00b2", heads=[], body=b"{}", junk=b"")
def test_webhook_raw_requests(env: Env, line: str, length: str | None,
                              heads: list[tuple[str, str]], body: bytes, junk: bytes) -> None:
    heads = [("Authorization", f"Bearer {TOKEN}"), *heads]
    if length is not None:
        heads.append(("Content-Length", length))
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in heads)
    data = head.encode("latin-1") + (b"X-Junk: " + junk + b"\r\n" if junk else b"") + b"\r\n" + body
    host, port = env.webhook.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert status, answer[:200]
    assert int(status.group(1)) in OK_CODES, answer[:300]
    env.alive()


# -- afterwards ------------------------------------------------------------------------------

def test_the_daemon_still_serves_after_the_fuzzing(env: Env) -> None:
    env.alive()
    assert env.daemon.result("status")["pid"] == env.pid
    before = env.sample("rollbackd_probe_runs_total")
    wait_for(lambda: env.sample("rollbackd_probe_runs_total") > before, 10, "probing goes on")
    r = httpx.post(env.webhook, json=notification(alert(LATENCY)),
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, trust_env=False)
    assert r.status_code == 200 and r.json()["mapped"] == 1
    assert env.sample('rollbackd_webhook_requests_total') > 100
    assert env.sample("rollbackd_webhook_requests_total", r'\{code="5\d\d"\}') == 0
    verify = env.daemon.result("audit", verify=True)
    assert verify["verified"] and verify["rows"] > 50, verify


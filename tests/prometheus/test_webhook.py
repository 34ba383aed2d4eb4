"""The Alertmanager webhook receiver in an in-process daemon: real HTTP on loopback, real payloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.app import Daemon
from rollbackd.daemon.config import ConfigError, load_config, parse_config
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.metrics import Metrics
from rollbackd.probes.observation import Symptom
from tests.conftest import SmtpSink
from tests.prometheus.alertmanager import BILLING, ERRORS, LATENCY, UNRELATED, alert, notification

TOKEN = "s3cret-alertmanager-token-0123456789"

PROBES = """
[targets.grading.probes.latency]
kind = "alertmanager"
match = {service = "grading", alertname = "GradingHighLatency"}
symptom = "slow"
interval = "1h"

[targets.grading.probes.errors]
kind = "alertmanager"
match = {service = "grading"}
match_re = {alertname = "Grading(5xx|Errors)"}
symptom = "server_error"
interval = "1h"

[targets.billing.probes.latency]
kind = "alertmanager"
match = {service = "billing"}
interval = "1h"
"""


def config_text(tmp_path: Path, smtp_port: int, port: int, probes: str = PROBES) -> str:
    (tmp_path / "alert-token").write_text(TOKEN + "\n")
    return f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
socket = "{tmp_path / 'state' / 'control.sock'}"
metrics_address = ""

[smtp]
host = "127.0.0.1"
port = {smtp_port}

[contacts.oncall]
emails = ["oncall@example.com"]

[alerts]
listen = "127.0.0.1:{port}"
token_file = "{tmp_path / 'alert-token'}"
{probes}"""


@dataclass
class Env:
    daemon: Daemon
    registry: CollectorRegistry
    url: str
    config: Path

    async def post(self, body: Any, token: str | None = TOKEN, path: str = "/webhook",
                   scheme: str = "Bearer") -> httpx.Response:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            return await client.post(self.url + path, content=content,
                                     headers={"Content-Type": "application/json", **headers})

    def probe(self, target: str, probe: str) -> str:
        h = self.daemon.monitors[target].health[probe]
        return "failing" if h.failing else "passing" if h.passing else "pending"

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def env(tmp_path: Path, smtp: SmtpSink) -> AsyncIterator[Env]:
    port = free_port()
    path = tmp_path / "rollbackd.toml"
    path.write_text(config_text(tmp_path, smtp.port, port))
    registry = CollectorRegistry()
    daemon = Daemon(load_config(path), path, Metrics(registry))
    await daemon.startup()
    try:
        yield Env(daemon, registry, f"http://127.0.0.1:{port}", path)
    finally:
        await daemon.shutdown()


async def test_firing_alert_fails_its_probe(env: Env) -> None:
    r = await env.post(notification(alert(LATENCY, summary="p95 latency 734 ms")))
    assert (r.status_code, r.json()) == (200, {"status": "ok", "mapped": 1, "unmatched": 0})
    h = env.daemon.monitors["grading"].health["latency"]
    assert h.failing and h.symptom is Symptom.SLOW
    assert "alert GradingHighLatency firing since 2024-05-01 10:45:02 UTC: p95 latency 734 ms" \
        in (h.last.detail if h.last else "")
    assert env.sample("rollbackd_probe_failing", target="grading", probe="latency") == 1


async def test_firing_alert_counts_only_for_matching_probes(env: Env) -> None:
    await env.post(notification(alert(LATENCY)))
    assert "failing" not in (env.probe("grading", "errors"), env.probe("billing", "latency"))
    assert env.sample("rollbackd_webhook_alerts_total", target="grading", probe="latency",
                      status="firing") == 1


async def test_resolved_alert_passes_again(env: Env) -> None:
    await env.post(notification(alert(ERRORS)))
    assert env.probe("grading", "errors") == "failing"
    r = await env.post(notification(alert(ERRORS, status="resolved")))
    assert r.status_code == 200 and env.probe("grading", "errors") == "passing"
    assert env.sample("rollbackd_probe_success", target="grading", probe="errors") == 1


async def test_grouped_notification_reaches_every_target(env: Env) -> None:
    body = notification(alert(LATENCY), alert(ERRORS), alert(BILLING), alert(UNRELATED),
                        group_by=("severity",))
    r = await env.post(body)
    assert r.json() == {"status": "ok", "mapped": 3, "unmatched": 1}
    assert {(t, p): env.probe(t, p) for t, p in
            [("grading", "latency"), ("grading", "errors"), ("billing", "latency")]} == \
        dict.fromkeys([("grading", "latency"), ("grading", "errors"), ("billing", "latency")],
                      "failing")
    assert env.sample("rollbackd_webhook_alerts_unmatched_total") == 1


async def test_group_with_one_resolved_keeps_the_other_firing(env: Env) -> None:
    eu = {**ERRORS, "region": "eu"}
    us = {**ERRORS, "alertname": "GradingErrors", "region": "us"}
    await env.post(notification(alert(eu), alert(us)))
    # The next notification of the group: eu resolved, us still firing.
    await env.post(notification(alert(eu, status="resolved"), alert(us)))
    h = env.daemon.monitors["grading"].health["errors"]
    assert h.failing and h.last is not None and "GradingErrors" in h.last.detail
    await env.post(notification(alert(eu, status="resolved"), alert(us, status="resolved")))
    assert env.sample("rollbackd_probe_failing", target="grading", probe="errors") == 0


async def test_firing_status_with_past_end_is_resolved(env: Env) -> None:
    await env.post(notification(alert(BILLING)))
    await env.post(notification(alert(BILLING, ends_at="2024-05-01T10:50:00Z")))
    assert env.sample("rollbackd_probe_failing", target="billing", probe="latency") == 0


async def test_reload_keeps_firing_alerts(env: Env) -> None:
    await env.post(notification(alert(LATENCY)))
    assert env.daemon.reload() == []
    await env.daemon.monitors["grading"].run_scheduled("latency")  # the rebuilt probe runs
    assert env.sample("rollbackd_probe_failing", target="grading", probe="latency") == 1


@pytest.mark.parametrize("token", [
    pytest.param(None, id="missing"),
    pytest.param("wrong-token-wrong-token-wrong", id="wrong"),
    pytest.param(TOKEN[:-1], id="prefix"),
    pytest.param(f"{TOKEN} extra", id="suffix"),
])
async def test_bad_token_is_401_and_changes_nothing(env: Env, token: str | None) -> None:
    r = await env.post(notification(alert(LATENCY)), token=token)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.probe("grading", "latency") != "failing"
    assert env.sample("rollbackd_webhook_requests_total", code="401") == 1


async def test_basic_auth_with_the_token_is_401(env: Env) -> None:
    r = await env.post(notification(alert(LATENCY)), scheme="Basic")
    assert r.status_code == 401 and env.probe("grading", "latency") != "failing"
    assert env.sample("rollbackd_webhook_requests_total", code="401") == 1


async def test_scheme_is_case_insensitive(env: Env) -> None:
    r = await env.post(notification(alert(LATENCY)), scheme="bearer")
    assert r.status_code == 200
    assert env.sample("rollbackd_probe_failing", target="grading", probe="latency") == 1


async def test_after_bad_requests_good_ones_still_work(env: Env) -> None:
    for _ in range(3):
        await env.post(b"{", token="nope")
        await env.post(b"{")
    r = await env.post(notification(alert(LATENCY)))
    assert r.status_code == 200
    assert env.sample("rollbackd_webhook_requests_total", code="200") == 1


MALFORMED = [
    pytest.param(b"not json at all", "body is not JSON", id="not-json"),
    pytest.param(b'{"version": "4"', "body is not JSON", id="truncated-json"),
    pytest.param(b"[]", "not an Alertmanager v4 notification", id="json-array"),
    pytest.param({**notification(alert(LATENCY)), "version": "3"}, "version", id="version-3"),
    pytest.param({k: v for k, v in notification(alert(LATENCY)).items() if k != "alerts"},
                 "alerts", id="no-alerts"),
    pytest.param(notification({**alert(LATENCY), "status": "pending"}), "alerts.0.status",
                 id="bad-alert-status"),
    pytest.param(notification({**alert(LATENCY), "startsAt": "yesterday"}), "alerts.0.startsAt",
                 id="bad-time"),
    pytest.param(notification({**alert(LATENCY), "labels": {"alertname": 7}}),
                 "alerts.0.labels.alertname", id="label-not-a-string"),
    pytest.param(b"\xff\xfe\x00garbage", "body is not JSON", id="binary"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED)
async def test_malformed_body_is_400(env: Env, body: Any, reason: str) -> None:
    r = await env.post(body)
    assert r.status_code == 400 and reason in r.json()["error"]
    assert env.sample("rollbackd_webhook_requests_total", code="400") == 1


async def raw(env: Env, request: bytes) -> bytes:
    host, port = env.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    if not request.endswith(b"\r\n\r\n") and b"Content-Length: 100\r\n" in request:
        writer.write_eof()  # promised 100 bytes, sent fewer, and hung up
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    await writer.wait_closed()
    return answer


AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.mark.parametrize(("request_bytes", "code"), [
    pytest.param(b"POST /webhook HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n{}", 411,
                 id="no-content-length"),
    pytest.param(b"POST /webhook HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
                 b"2\r\n{}\r\n0\r\n\r\n", 411, id="chunked"),
    pytest.param(b"POST /webhook HTTP/1.1\r\n" + AUTH + b"Content-Length: 100\r\n\r\n{}", 400,
                 id="short-body"),
    pytest.param(b"POST /webhook HTTP/1.1\r\n" + AUTH + b"Content-Length: 99999999\r\n\r\n", 413,
                 id="huge-body"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="no-request-line"),
    pytest.param(b"GET /webhook HTTP/1.1\r\n" + AUTH + b"\r\n", 405, id="get"),
    pytest.param(b"POST /api/v2/alerts HTTP/1.1\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", 404,
                 id="wrong-path"),
])
async def test_malformed_http(env: Env, request_bytes: bytes, code: int) -> None:
    answer = await raw(env, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {code} ".encode()), answer[:200]
    assert env.sample("rollbackd_webhook_requests_total", code=str(code)) == 1


async def test_a_client_that_hangs_up_costs_nothing(env: Env) -> None:
    host, port = env.url.removeprefix("http://").split(":")
    for _ in range(5):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /webhook HTTP/1.1\r\nContent-")
        writer.close()
        await writer.wait_closed()
    r = await env.post(notification(alert(LATENCY)))
    assert r.status_code == 200
    assert env.sample("rollbackd_webhook_requests_total", code="400") == 5


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("alerts", "message"), [
    pytest.param('listen = "0.0.0.0:9618"\ntoken_file = "{token}"',
                 "alerts.listen: must be a loopback address", id="not-loopback"),
    pytest.param('listen = "127.0.0.1"\ntoken_file = "{token}"',
                 "alerts.listen: expected host:port", id="no-port"),
    pytest.param('token_file = "{missing}"', "alerts.token_file: cannot read secret file",
                 id="missing-token-file"),
    pytest.param('token_file = "{short}"', "shorter than 16 characters", id="short-token"),
    pytest.param('listen = "127.0.0.1:9618"', "alerts.token_file: required key is missing",
                 id="no-token"),
])
def test_alerts_config_errors(tmp_path: Path, alerts: str, message: str) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "short").write_text("abc")
    text = (f"[alerts]\n{alerts}\n".format(token=tmp_path / "token", short=tmp_path / "short",
                                           missing=tmp_path / "missing")
            + '[targets.web.probes.health]\nkind = "http_health"\nurl = "http://127.0.0.1:1/"\n')
    with pytest.raises(ConfigError) as err:
        parse_config(text, "rollbackd.toml")
    assert any(message in e for e in err.value.errors), err.value.errors


def test_token_never_shows(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    cfg = parse_config(f'[alerts]\ntoken_file = "{tmp_path / "token"}"\n'
                       '[targets.web.probes.health]\nkind = "http_health"\n'
                       'url = "http://127.0.0.1:1/"\n')
    assert cfg.alerts is not None and cfg.alerts.listen == "127.0.0.1:9618"
    assert TOKEN not in repr(cfg) and TOKEN not in cfg.model_dump_json()


@pytest.mark.parametrize(("probe", "message"), [
    pytest.param('kind = "alertmanager"', "give match or match_re", id="no-matcher"),
    pytest.param('kind = "alertmanager"\nmatch_re = {alertname = "(unclosed"}',
                 "not a regular expression", id="bad-regex"),
    pytest.param('kind = "alertmanager"\nmatch = {a = "b"}\nsymptom = "sluggish"',
                 "targets.web.probes.am.symptom", id="unknown-symptom"),
])
def test_alertmanager_probe_config_errors(probe: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[targets.web.probes.am]\n{probe}\n")
    assert any(message in e for e in err.value.errors), err.value.errors

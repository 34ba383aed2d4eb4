"""http_health against a real server: status, body, JSON fields, version, latency, TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from rollbackd.probes.http_health import HttpHealthProbe, HttpHealthSettings
from rollbackd.probes.observation import Observation, Status, Symptom
from tests.probes.servers import HttpServer, Pki, Reply, free_port

HEALTHY = {"status": "ok", "version": "1.4.2", "checks": {"db": "up", "redis": True},
           "nodes": [{"name": "a"}]}


async def check(url: str, **kw: Any) -> Observation:
    kw.setdefault("timeout", 2.0)
    return await HttpHealthProbe("health", HttpHealthSettings(url=url, **kw)).check()


async def test_healthy_answer_is_ok_with_latency(server: HttpServer) -> None:
    obs = await check(server.url + "/health")
    assert obs.status is Status.OK and obs.symptom is None
    assert (obs.probe, obs.kind) == ("health", "http_health")
    assert obs.detail.startswith("HTTP 200 in ") and obs.detail.endswith(" ms.")
    assert 0 < obs.metrics["latency_seconds"] <= obs.duration
    assert obs.metrics["http_status"] == 200
    assert server.requests[0].method == "GET" and server.requests[0].path == "/health"


@pytest.mark.parametrize(("reply", "symptom", "words"), [
    pytest.param(Reply(status=500), Symptom.SERVER_ERROR, "HTTP 500", id="500"),
    pytest.param(Reply(status=503), Symptom.SERVER_ERROR, "HTTP 503", id="503"),
    pytest.param(Reply(status=404), Symptom.BAD_RESPONSE, "expected 200", id="404"),
    pytest.param(Reply(status=302, headers={"Location": "/elsewhere"}), Symptom.BAD_RESPONSE,
                 "expected 200", id="redirect-not-followed"),
    pytest.param(Reply(body=b"degraded"), Symptom.BAD_RESPONSE, "lacks 'healthy'", id="body"),
    pytest.param(Reply(drop=True), Symptom.UNREACHABLE, "cannot connect", id="disconnect"),
    pytest.param(Reply(raw=b"SSH-2.0-OpenSSH\r\n\r\n"), Symptom.BAD_RESPONSE, "malformed",
                 id="not-http"),
])
async def test_each_failure_is_detected_then_ok_after_repair(
    server: HttpServer, reply: Reply, symptom: Symptom, words: str
) -> None:
    server.reply(reply)
    obs = await check(server.url, expect_body="healthy")
    assert (obs.status, obs.symptom) == (Status.FAIL, symptom), obs.detail
    assert words in obs.detail
    server.reply(Reply(body=b"all healthy"))
    assert (await check(server.url, expect_body="healthy")).ok


async def test_expected_status_other_than_200(server: HttpServer) -> None:
    server.reply(Reply(status=204, body=b""))
    assert (await check(server.url, expect_status=204)).ok
    assert (await check(server.url)).symptom is Symptom.BAD_RESPONSE


async def test_hang_is_a_timeout(server: HttpServer) -> None:
    server.reply(Reply(hang=True))
    obs = await check(server.url, timeout=0.3)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.TIMEOUT)
    assert obs.detail == f"127.0.0.1:{server.port} gave no answer within 0.3s."
    server.reply(Reply())
    assert (await check(server.url)).ok


async def test_refused_connection_is_unreachable_until_the_server_is_back() -> None:
    port = free_port()
    obs = await check(f"http://127.0.0.1:{port}/health")
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE)
    assert obs.detail.startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert obs.detail.endswith(": Connection refused.")
    with HttpServer(port=port):
        assert (await check(f"http://127.0.0.1:{port}/health")).ok


async def test_slow_answer_fails_as_slow_then_ok_when_fast(server: HttpServer) -> None:
    server.reply(Reply(delay=0.25))
    obs = await check(server.url, max_latency="100ms")
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SLOW)
    assert obs.metrics["latency_seconds"] >= 0.25
    assert "slower than the 100 ms limit" in obs.detail
    server.reply(Reply())
    obs = await check(server.url, max_latency="100ms")
    assert obs.ok  # within the 100 ms limit, or it would fail as slow (no wall-clock figure)


async def test_an_error_status_beats_slowness(server: HttpServer) -> None:
    server.reply(Reply(status=500, delay=0.2))
    obs = await check(server.url, max_latency="50ms")
    assert obs.symptom is Symptom.SERVER_ERROR


async def test_expect_json_fields_and_version(server: HttpServer) -> None:
    server.reply(Reply(json=HEALTHY))
    expect = {"status": "ok", "checks.db": "up", "checks.redis": True, "nodes.0.name": "a"}
    obs = await check(server.url, expect_json=expect, version_field="version")
    assert obs.ok, obs.detail
    assert obs.version == "1.4.2"


@pytest.mark.parametrize(("doc", "words"), [
    pytest.param({**HEALTHY, "status": "degraded"}, "'status' is \"degraded\", expected \"ok\"",
                 id="wrong-value"),
    pytest.param({k: v for k, v in HEALTHY.items() if k != "status"}, "'status' is missing",
                 id="missing-field"),
    pytest.param({**HEALTHY, "checks": {"db": "up", "redis": 1}},
                 "'checks.redis' is 1, expected true", id="true-is-not-1"),
    pytest.param({**HEALTHY, "nodes": []}, "'nodes.0.name' is missing", id="short-list"),
    pytest.param(["status", "ok"], "'status' is missing", id="not-an-object"),
])
async def test_expect_json_mismatch_is_a_bad_response(
    server: HttpServer, doc: object, words: str
) -> None:
    server.reply(Reply(json=doc))
    expect = {"status": "ok", "checks.redis": True, "nodes.0.name": "a"}
    obs = await check(server.url, expect_json=expect)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.BAD_RESPONSE)
    assert words in obs.detail, obs.detail
    server.reply(Reply(json=HEALTHY))
    assert (await check(server.url, expect_json=expect)).ok


async def test_body_that_is_not_json(server: HttpServer) -> None:
    server.reply(Reply(body=b"<html>ok</html>"))
    obs = await check(server.url, expect_json={"status": "ok"})
    assert obs.symptom is Symptom.BAD_RESPONSE and "not JSON (15 bytes)" in obs.detail
    # Only the version was asked for: a body without one is no failure, just no version.
    obs = await check(server.url, version_field="version")
    assert obs.ok and obs.version is None


async def test_numbers_compare_as_numbers_and_versions_may_be_numbers(server: HttpServer) -> None:
    server.reply(Reply(json={"workers": 4.0, "build": 1234}))
    obs = await check(server.url, expect_json={"workers": 4}, version_field="build")
    assert obs.ok and obs.version == "1234"


async def test_a_huge_body_is_read_only_up_to_the_cap(server: HttpServer) -> None:
    server.reply(Reply(body=b"ok " + b"x" * (8 << 20)))
    obs = await check(server.url, expect_body="ok ")
    assert obs.ok, obs.detail
    obs = await check(server.url, expect_json={"status": "ok"})
    assert obs.symptom is Symptom.BAD_RESPONSE and f"not JSON ({1 << 20} bytes)" in obs.detail


async def test_proxy_environment_is_ignored(server: HttpServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, dead)
    assert (await check(server.url)).ok


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_with_private_ca(pki: Pki) -> None:
    with HttpServer(tls=pki.server_context()) as srv:
        assert srv.url.startswith("https://")
        obs = await check(srv.url, ca_file=pki.ca)
        assert obs.ok, obs.detail
        # The system store does not know the test CA.
        obs = await check(srv.url)
        assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE)
        assert "TLS certificate verify failed" in obs.detail
        # Unless verification is off.
        assert (await check(srv.url, verify_tls=False)).ok


async def test_mutual_tls_needs_the_client_certificate(pki: Pki) -> None:
    with HttpServer(tls=pki.server_context(require_client_cert=True)) as srv:
        obs = await check(srv.url, ca_file=pki.ca)
        assert obs.status is Status.FAIL, obs.detail
        obs = await check(srv.url, ca_file=pki.ca, client_cert=pki.client_cert,
                          client_key=pki.client_key)
        assert obs.ok, obs.detail
        assert (await check(srv.url, ca_file=pki.ca, client_cert=pki.client_bundle)).ok


async def test_missing_ca_file_is_a_probe_error(pki: Pki, tmp_path: Path) -> None:
    with HttpServer(tls=pki.server_context()) as srv:
        obs = await check(srv.url, ca_file=tmp_path / "gone.pem")
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert obs.detail.startswith("probe error: FileNotFoundError")


async def test_encrypted_client_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    with HttpServer(tls=pki.server_context(require_client_cert=True)) as srv:
        obs = await check(srv.url, ca_file=pki.ca, client_cert=pki.client_cert,
                          client_key=encrypted)
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "the client key is encrypted" in obs.detail


async def test_client_key_never_appears_in_repr_or_detail(pki: Pki) -> None:
    settings = HttpHealthSettings(url="https://127.0.0.1:1/", client_cert=pki.client_cert,
                                  client_key=pki.client_key)
    key_pem = pki.client_key.read_text()
    body = key_pem.splitlines()[1]
    probe = HttpHealthProbe("health", settings)
    obs = await probe.check()
    for text in (repr(settings), repr(probe), obs.detail, repr(obs)):
        assert body not in text


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "words"), [
    pytest.param({"url": "ftp://x/"}, "should match pattern", id="scheme"),
    pytest.param({"url": "http://user:pw@127.0.0.1/"}, "must not contain user:password@",
                 id="userinfo"),
    pytest.param({"url": "http://x/", "client_key": "/k.pem"}, "client_cert is not", id="key-only"),
    pytest.param({"url": "http://x/", "ca_file": "ca.pem"}, "must be an absolute path",
                 id="relative-path"),
    pytest.param({"url": "http://x/", "max_latency": "5s", "timeout": "5s"},
                 "must be below timeout", id="latency-not-below-timeout"),
    pytest.param({"url": "http://x/", "retries": 3}, "Extra inputs", id="unknown-key"),
])
def test_bad_settings_are_rejected(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpHealthSettings(**kw)
    assert words in str(info.value)


def test_settings_are_frozen() -> None:
    settings = HttpHealthSettings(url="http://x/")
    with pytest.raises(ValidationError):
        settings.url = "http://y/"  # type: ignore[misc]

"""Property: whatever a server answers, http_health and login return an ok or fail observation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollbackd.probes.http_health import HttpHealthProbe, HttpHealthSettings
from rollbackd.probes.login import LoginProbe, LoginSettings
from rollbackd.probes.observation import Observation, Status, Symptom
from tests.probes.servers import HttpServer, Reply

PASSWORD = "hunter2-but-longer"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=3000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"status": json_values, "version": json_values}).map(
        lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000),  # deeper than the JSON parser's recursion limit
)
replies = st.builds(
    Reply,
    status=st.integers(100, 999),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/plain; charset=utf-8",
                                  "text/html; charset=no-such-codec",
                                  "application/json; charset=utf-16", ""]),
) | st.builds(Reply, raw=st.binary(max_size=200)) | st.just(Reply(drop=True)) | st.builds(
    Reply, json=st.fixed_dictionaries({"status": st.just("ok"), "version": json_values}))


def assert_sane(obs: Observation) -> None:
    assert isinstance(obs, Observation)
    # ERROR means the probe itself broke: no answer from a server may cause that.
    assert obs.status in (Status.OK, Status.FAIL), obs.detail
    assert (obs.symptom is None) == (obs.status is Status.OK)
    assert obs.symptom is not Symptom.PROBE_ERROR
    assert isinstance(obs.detail, str) and obs.detail and "\n" not in obs.detail
    assert all(isinstance(v, float) for v in obs.metrics.values())
    assert PASSWORD not in obs.detail + repr(obs)


def test_http_probes_never_raise_whatever_the_server_answers(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    with HttpServer() as srv:
        health = HttpHealthProbe("health", HttpHealthSettings(
            url=srv.url + "/health", timeout=1.0, expect_body="ok", version_field="version",
            expect_json={"status": "ok"}, max_latency=0.5))
        login = LoginProbe("login", LoginSettings(
            url=srv.url + "/login", timeout=1.0, email="probe@example.org",
            password_file=password_file))

        @settings(max_examples=75, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(reply=replies)
        def run(reply: Reply) -> None:
            srv.reply(reply)
            for probe in (health, login):
                assert_sane(asyncio.run(probe.check()))

        run()

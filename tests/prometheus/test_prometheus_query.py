"""The prometheus_query probe against a real Prometheus server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.daemon.demo.workspace import free_port
from rollbackd.probes.observation import Status, Symptom
from rollbackd.probes.prometheus_query import PrometheusQueryProbe, PrometheusQuerySettings
from rollbackd.probes.registry import PROBE_KINDS, probe_class
from tests.prometheus.conftest import PrometheusServer, launch_prometheus

TWO_ROUTES = ('label_replace(vector(0.1), "route", "/health", "", "")'
              ' or label_replace(vector(0.9), "route", "/api/auth/login", "", "")')


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = launch_prometheus(tmp_path_factory.mktemp("prometheus") / "server")
    yield server
    server.stop()


def probe(url: str, query: str, threshold: float = 0.5, **extra: Any) -> PrometheusQueryProbe:
    settings = PrometheusQuerySettings(url=url, query=query, threshold=threshold, timeout=5,
                                       **extra)
    return PrometheusQueryProbe("p95", settings)


def test_registered_as_a_probe_kind() -> None:
    assert PROBE_KINDS["prometheus_query"].settings is PrometheusQuerySettings
    assert probe_class("prometheus_query") is PrometheusQueryProbe


async def test_value_above_threshold_fails_slow(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, "vector(0.734)").check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SLOW)
    assert obs.detail == "value 0.734 > 0.5." and obs.metrics["value"] == 0.734


async def test_value_below_threshold_passes(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, "vector(0.2)").check()
    assert obs.ok and obs.detail == "1 series, none > 0.5 (nearest: value 0.2)."


async def test_comparison_and_symptom_are_configurable(prometheus: PrometheusServer) -> None:
    # A success ratio below 99 % is a server-side failure, not slowness.
    obs = await probe(prometheus.url, "vector(0.95)", 0.99, comparison="<",
                      symptom="server_error").check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SERVER_ERROR)


async def test_scalar_result(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, "scalar(vector(3))", 2).check()
    assert obs.status is Status.FAIL and obs.metrics["value"] == 3


async def test_any_series_crossing_fails_and_is_named(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, TWO_ROUTES).check()
    assert obs.status is Status.FAIL
    assert obs.detail == '{route="/api/auth/login"} = 0.9 > 0.5.' and obs.metrics["crossing"] == 1


async def test_no_series_is_ok_by_default(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, 'up{job="nothing-scrapes-this"}').check()
    assert obs.ok and obs.metrics["series"] == 0


async def test_no_series_can_be_a_failure(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, 'up{job="nothing-scrapes-this"}', on_empty="fail").check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SLOW)


async def test_nan_never_crosses(prometheus: PrometheusServer) -> None:
    # A rate over no requests is NaN: no evidence of anything, not a crossing of "!=".
    obs = await probe(prometheus.url, "vector(NaN)", 1, comparison="!=").check()
    assert obs.ok, obs.detail


async def test_bad_query_is_a_probe_error(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, "sum(rate(http_requests_total[5m]").check()
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "rejected the query (HTTP 400)" in obs.detail


async def test_range_result_is_a_probe_error(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url, "vector(1)[1m:10s]").check()
    assert obs.status is Status.ERROR and "returns a matrix" in obs.detail


async def test_not_prometheus_is_a_probe_error(prometheus: PrometheusServer) -> None:
    obs = await probe(prometheus.url + "/not-here", "vector(1)").check()
    assert obs.status is Status.ERROR and "HTTP 404 without JSON" in obs.detail


async def test_unreachable_prometheus_is_a_probe_error() -> None:
    obs = await probe(f"http://127.0.0.1:{free_port()}", "vector(1)").check()
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "cannot query Prometheus" in obs.detail


@pytest.mark.parametrize(("extra", "message"), [
    pytest.param({"threshold": float("inf")}, "finite", id="infinite-threshold"),
    pytest.param({"comparison": "=~"}, "literal_error", id="bad-comparison"),
    pytest.param({"symptom": "probe_error"}, "not evidence", id="probe-error-symptom"),
    pytest.param({"query": ""}, "at least 1 character", id="empty-query"),
    pytest.param({"url": "127.0.0.1:9090"}, "pattern", id="url-without-scheme"),
])
def test_bad_settings(extra: dict[str, Any], message: str) -> None:
    base = {"url": "http://127.0.0.1:9090", "query": "vector(1)", "threshold": 1.0}
    with pytest.raises(ValidationError) as err:
        PrometheusQuerySettings.model_validate({**base, **extra})
    assert message in str(err.value) or message in str(err.value.errors())

"""prometheus_query: an instant PromQL query over the HTTP API, judged against a threshold."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from rollbackd.probes.base import BaseProbe
from rollbackd.probes.http import NO_ANSWER, HttpClient, HttpSettings
from rollbackd.probes.observation import Observation, Status, Symptom

Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


class PrometheusQuerySettings(HttpSettings):
    kind: Literal["prometheus_query"] = "prometheus_query"
    # url (inherited): the Prometheus server, e.g. "http://127.0.0.1:9090"; /api/v1/query is added.
    query: str = Field(min_length=1)
    """The PromQL expression, e.g. 'histogram_quantile(0.95, sum by (le) (rate(...[5m])))'."""
    threshold: float
    """The number each series' value is compared with."""
    comparison: Comparison = ">"
    """The probe fails when `value <comparison> threshold` holds for any returned series."""
    symptom: Symptom = Symptom.SLOW
    """What crossing the threshold means to the decision tree (slow: perf_degraded)."""
    on_empty: Literal["ok", "fail", "error"] = "ok"
    """An empty result (no series) is healthy, a failure, or a probe error (e.g. no data)."""

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("symptom")
    @classmethod
    def _evidence(cls, v: Symptom) -> Symptom:
        if v is Symptom.PROBE_ERROR:
            raise ValueError("probe_error is not evidence about a target; pick another symptom")
        return v


class QueryError(Exception):
    """Prometheus refused or could not answer the query: the probe's problem, not the app's."""


def _series(data: Any) -> list[tuple[str, float]]:
    """(label set, value) of each series in an instant-query result."""
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return [("", float(result[1]))]
    if kind == "vector":
        return [(_labels(s.get("metric", {})), float(s["value"][1])) for s in result]
    raise QueryError(f"the query returns a {kind}; an instant vector or scalar is needed")


def _labels(metric: dict[str, str]) -> str:
    if not metric:
        return ""
    text = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"
    return text if len(text) <= 120 else text[:117] + "..."


class PrometheusQueryProbe(BaseProbe[PrometheusQuerySettings]):
    kind: ClassVar[str] = "prometheus_query"

    def __init__(self, name: str, settings: PrometheusQuerySettings) -> None:
        super().__init__(name, settings)
        self.http = HttpClient(settings)

    async def run(self, started: float) -> Observation:
        try:
            series = await self._query()
        except QueryError as exc:
            return self.error(f"{exc}.", started)
        return self._judge(series, started)

    async def _query(self) -> list[tuple[str, float]]:
        s = self.settings
        url = s.url.rstrip("/") + "/api/v1/query"
        try:
            answer = await self.http.send("POST", url, data={"query": s.query})
        except NO_ANSWER as exc:
            raise QueryError(f"cannot query Prometheus at {s.url}: {type(exc).__name__}") from None
        resp, body = answer.response, answer.body
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise QueryError(f"Prometheus answered HTTP {resp.status_code} without JSON") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error", "no reason given") if isinstance(doc, dict) else "not an object"
            raise QueryError(f"Prometheus rejected the query (HTTP {resp.status_code}): "
                             f"{str(error)[:200]}")
        try:
            return _series(doc["data"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise QueryError(f"unexpected query result: {type(exc).__name__}: {exc}") from None

    def _judge(self, series: list[tuple[str, float]], started: float) -> Observation:
        s = self.settings
        if not series:
            detail = "the query returned no series."
            status = {"ok": Status.OK, "fail": Status.FAIL, "error": Status.ERROR}[s.on_empty]
            symptom = {Status.OK: None, Status.FAIL: s.symptom}.get(status, Symptom.PROBE_ERROR)
            return self.observe(status, detail, started, symptom, None, {"series": 0.0})
        crossed = COMPARE[s.comparison]
        # NaN (e.g. a rate over no requests) is no value at all: it never crosses the threshold.
        bad = [(labels, v) for labels, v in series if not math.isnan(v) and crossed(v, s.threshold)]

        def distance(lv: tuple[str, float]) -> float:
            return math.inf if math.isnan(lv[1]) else abs(lv[1] - s.threshold)

        # A failure shows the series furthest past the threshold; a pass, the one nearest to it.
        worst = max(bad, key=distance) if bad else min(series, key=distance)
        metrics = {"value": worst[1], "series": float(len(series)), "crossing": float(len(bad))}
        where = f"{worst[0]} = " if worst[0] else "value "
        if bad:
            more = f" (and {len(bad) - 1} more series)" if len(bad) > 1 else ""
            return self.fail(f"{where}{worst[1]:g} {s.comparison} {s.threshold:g}{more}.",
                             started, s.symptom, None, metrics)
        return self.ok(f"{len(series)} series, none {s.comparison} {s.threshold:g} "
                       f"(nearest: {where}{worst[1]:g}).", started, None, metrics)

"""http_health: GET a URL and judge status code, body, JSON fields and latency."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import httpx
from pydantic import Field, JsonValue, model_validator

from rollbackd.probes.base import BaseProbe, PositiveDuration
from rollbackd.probes.http import (
    NO_ANSWER,
    HttpClient,
    HttpSettings,
    LatencySettings,
    body_text,
    latency_below_timeout,
    transport_failure,
)
from rollbackd.probes.json_fields import MISSING, json_equal, json_field, short
from rollbackd.probes.observation import Observation, Symptom


class HttpHealthSettings(HttpSettings):
    kind: Literal["http_health"] = "http_health"
    expect_status: int = Field(default=200, ge=100, le=599)
    """The status code a healthy target answers with; any other is a failure."""
    expect_body: str | None = None
    """A substring the body must contain, when set."""
    expect_json: dict[str, JsonValue] | None = None
    """Dotted JSON field path -> the value it must have, e.g. {"status": "ok"}."""
    version_field: str | None = None
    """Dotted JSON field path whose value is reported as the observed version."""
    max_latency: PositiveDuration | None = None
    """A good answer slower than this fails with symptom slow (perf_degraded, not app_down)."""
    latency: LatencySettings | None = None
    """Baseline latency watch (factor, floor, window, windows, ...); unset: not watched."""

    @model_validator(mode="after")
    def _latency(self) -> HttpHealthSettings:
        latency_below_timeout(self.max_latency, self.timeout)
        return self


class HttpHealthProbe(BaseProbe[HttpHealthSettings]):
    kind: ClassVar[str] = "http_health"

    def __init__(self, name: str, settings: HttpHealthSettings) -> None:
        super().__init__(name, settings)
        self.http = HttpClient(settings)

    async def run(self, started: float) -> Observation:
        s = self.settings
        try:
            answer = await self.http.send("GET", s.url)
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, s.url, s.timeout)
            return self.fail(detail, started, symptom)
        resp, latency = answer.response, answer.latency
        metrics = {"latency_seconds": latency, "http_status": float(resp.status_code)}
        return self._judge(resp, answer.body, latency, metrics, started)

    def _judge(self, resp: httpx.Response, body: bytes, latency: float,
               metrics: dict[str, float], started: float) -> Observation:
        s, code = self.settings, resp.status_code
        said = f"HTTP {code} in {latency * 1000:.0f} ms"
        if code >= 500:
            return self.fail(f"{said}.", started, Symptom.SERVER_ERROR, None, metrics)
        if code != s.expect_status:
            return self.fail(f"{said}, expected {s.expect_status}.", started,
                             Symptom.BAD_RESPONSE, None, metrics)
        if s.expect_body is not None and s.expect_body not in body_text(resp, body):
            return self.fail(f"{said}, but the body lacks {s.expect_body!r}.", started,
                             Symptom.BAD_RESPONSE, None, metrics)
        version, problem = self._json(body)
        if problem is not None:
            return self.fail(f"{said}, but {problem}.", started, Symptom.BAD_RESPONSE, version,
                             metrics)
        if s.max_latency is not None and latency > s.max_latency:
            return self.fail(f"{said}, slower than the {s.max_latency * 1000:.0f} ms limit.",
                             started, Symptom.SLOW, version, metrics)
        return self.ok(f"{said}.", started, version, metrics)
    def _json(self, body: bytes) -> tuple[str | None, str | None]:
        """(version, what is wrong with the JSON body or None); only parses when asked to."""
        s = self.settings
        if not s.expect_json and s.version_field is None:
            return None, None
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None, f"the body is not JSON ({len(body)} bytes)" if s.expect_json else None
        version = None
        if s.version_field is not None:
            found = json_field(doc, s.version_field)
            if isinstance(found, str | int | float) and not isinstance(found, bool):
                version = str(found)[:200]
        for path, want in (s.expect_json or {}).items():
            got = json_field(doc, path)
            if got is MISSING or not json_equal(got, want):
                return version, f"JSON field {path!r} is {short(got)}, expected {short(want)}"
        return version, None

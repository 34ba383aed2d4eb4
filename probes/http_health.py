"""http_health: GET a URL and judge status code, optional body match, and latency."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import httpx
from pydantic import Field

from probes.base import ProbeSettings
from probes.observation import Observation, Status, Symptom


class HttpHealthSettings(ProbeSettings):
    kind: Literal["http_health"] = "http_health"
    url: str = Field(pattern=r"^https?://")
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: str | None = None
    """A substring the body must contain, when set."""
    verify_tls: bool = True


class HttpHealthProbe:
    kind: ClassVar[str] = "http_health"

    def __init__(self, name: str, settings: HttpHealthSettings) -> None:
        self.name = name
        self.settings = settings

    def _obs(self, status: Status, detail: str, started: float, **kw: object) -> Observation:
        return Observation(
            probe=self.name,
            kind=self.kind,
            status=status,
            detail=detail,
            duration=time.monotonic() - started,
            **kw,  # type: ignore[arg-type]
        )

    async def check(self) -> Observation:
        s = self.settings
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(
                timeout=s.timeout, verify=s.verify_tls, follow_redirects=False
            ) as client:
                resp = await client.get(s.url)
        except httpx.TimeoutException:
            return self._obs(Status.FAIL, f"no answer within {s.timeout:g}s", started,
                             symptom=Symptom.TIMEOUT)
        except httpx.TransportError as exc:
            return self._obs(Status.FAIL, f"cannot connect: {type(exc).__name__}", started,
                             symptom=Symptom.UNREACHABLE)
        except Exception as exc:  # a probe never raises: a crash is a probe error
            return self._obs(Status.ERROR, f"probe error: {type(exc).__name__}: {exc}", started,
                             symptom=Symptom.PROBE_ERROR)
        if resp.status_code >= 500:
            return self._obs(Status.FAIL, f"HTTP {resp.status_code}", started,
                             symptom=Symptom.SERVER_ERROR)
        if resp.status_code != s.expect_status:
            return self._obs(Status.FAIL, f"HTTP {resp.status_code}, expected {s.expect_status}",
                             started, symptom=Symptom.BAD_RESPONSE)
        if s.expect_body is not None and s.expect_body not in resp.text:
            return self._obs(Status.FAIL, f"body lacks {s.expect_body!r}", started,
                             symptom=Symptom.BAD_RESPONSE)
        return self._obs(Status.OK, f"HTTP {resp.status_code}", started)

"""login: POST a known-good account's credentials and judge the answer like a user would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from probes.base import PositiveDuration
from probes.http_health import (
    NO_ANSWER,
    AbsolutePath,
    HttpSettings,
    LatencySettings,
    http_client,
    latency_below_timeout,
    read_capped,
    ssl_context,
    transport_failure,
)
from probes.observation import Observation, Status, Symptom

# Status code -> what it says about the probe account; 5xx and 2xx are ranges, handled apart.
_CODES = {
    401: Symptom.WRONG_CREDENTIALS,
    403: Symptom.WRONG_CREDENTIALS,
    423: Symptom.ACCOUNT_LOCKED,
}


class LoginSettings(HttpSettings):
    kind: Literal["login"] = "login"
    email: str = Field(min_length=1)
    """The probe account's login name (not a secret; shown in details)."""
    password_file: AbsolutePath
    """Absolute path of a file holding the probe account's password; read at each check."""
    email_field: str = Field(default="email", min_length=1)
    """JSON key the login endpoint expects the email under."""
    password_field: str = Field(default="password", min_length=1)
    """JSON key the login endpoint expects the password under."""
    max_latency: PositiveDuration | None = None
    """A successful login slower than this fails with symptom slow (perf_degraded)."""
    latency: LatencySettings | None = None
    """Baseline latency watch (factor, floor, window, windows, ...); unset: not watched."""

    @model_validator(mode="after")
    def _latency(self) -> LoginSettings:
        latency_below_timeout(self.max_latency, self.timeout)
        return self


def read_password(path: Path) -> str:
    """The password in `path`; blocking, so called in a thread. One trailing newline is dropped."""
    return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")


class LoginProbe:
    kind: ClassVar[str] = "login"

    def __init__(self, name: str, settings: LoginSettings) -> None:
        self.name = name
        self.settings = settings

    def _obs(self, status: Status, detail: str, started: float, symptom: Symptom | None = None,
             metrics: dict[str, float] | None = None) -> Observation:
        return Observation(probe=self.name, kind=self.kind, status=status, detail=detail,
                           duration=time.monotonic() - started, symptom=symptom,
                           metrics=metrics or {})

    async def check(self) -> Observation:
        started = time.monotonic()
        path = self.settings.password_file
        try:
            password = await asyncio.to_thread(read_password, path)
        except OSError as exc:
            return self._obs(Status.ERROR, f"cannot read the password file {str(path)!r}: "
                             f"{exc.strerror or type(exc).__name__}.", started, Symptom.PROBE_ERROR)
        except UnicodeDecodeError:
            return self._obs(Status.ERROR, f"the password file {str(path)!r} is not UTF-8 text.",
                             started, Symptom.PROBE_ERROR)
        if not password:  # a 401 for an empty password would be blamed on the app
            return self._obs(Status.ERROR, f"the password file {str(path)!r} is empty.", started,
                             Symptom.PROBE_ERROR)
        try:
            return await self._login(password, started)
        except Exception as exc:  # a probe never raises: a crash is a probe error
            detail = f"probe error: {type(exc).__name__}: {exc}"
            # Belt and braces: no library message may carry the password out.
            detail = detail.replace(password, "<password>")
            return self._obs(Status.ERROR, detail, started, Symptom.PROBE_ERROR)

    async def _login(self, password: str, started: float) -> Observation:
        s = self.settings
        verify = await asyncio.to_thread(ssl_context, s)
        payload = {s.email_field: s.email, s.password_field: password}
        sent = time.monotonic()
        try:
            async with http_client(s, verify) as client, client.stream(
                "POST", s.url, json=payload
            ) as resp:
                await read_capped(resp)  # the answer's body is not judged, and never logged
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, s.url, s.timeout)
            return self._obs(Status.FAIL, detail, started, symptom)
        latency = time.monotonic() - sent
        code = resp.status_code
        metrics = {"latency_seconds": latency, "http_status": float(code)}
        said = f"login as {s.email} got HTTP {code} in {latency * 1000:.0f} ms"
        if 200 <= code < 300:
            if s.max_latency is not None and latency > s.max_latency:
                return self._obs(Status.FAIL, f"{said}, slower than the "
                                 f"{s.max_latency * 1000:.0f} ms limit.", started, Symptom.SLOW,
                                 metrics)
            return self._obs(Status.OK, f"{said}.", started, None, metrics)
        if code >= 500:
            return self._obs(Status.FAIL, f"{said}.", started, Symptom.SERVER_ERROR, metrics)
        symptom = _CODES.get(code, Symptom.BAD_RESPONSE)
        why = {Symptom.WRONG_CREDENTIALS: "the known-good credentials were refused",
               Symptom.ACCOUNT_LOCKED: "the probe account is locked"}.get(symptom, "expected 2xx")
        return self._obs(Status.FAIL, f"{said}: {why}.", started, symptom, metrics)

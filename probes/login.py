"""login: POST a known-good account's credentials and judge the answer like a user would."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from probes.base import AbsolutePath, BaseProbe, PositiveDuration
from probes.http import (
    NO_ANSWER,
    HttpClient,
    HttpSettings,
    LatencySettings,
    latency_below_timeout,
    transport_failure,
)
from probes.observation import Observation, Symptom

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
    """Absolute path of a file holding the probe account's password; read at each check (a
    small file read on the event loop: cheaper than a thread hop)."""
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
    """The password in `path`; one trailing newline is dropped."""
    return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")


class LoginProbe(BaseProbe[LoginSettings]):
    kind: ClassVar[str] = "login"

    def __init__(self, name: str, settings: LoginSettings) -> None:
        super().__init__(name, settings)
        self.http = HttpClient(settings)

    async def run(self, started: float) -> Observation:
        path = self.settings.password_file
        try:
            password = read_password(path)
        except OSError as exc:
            return self.error(f"cannot read the password file {str(path)!r}: "
                              f"{exc.strerror or type(exc).__name__}.", started)
        except UnicodeDecodeError:
            return self.error(f"the password file {str(path)!r} is not UTF-8 text.", started)
        if not password:  # a 401 for an empty password would be blamed on the app
            return self.error(f"the password file {str(path)!r} is empty.", started)
        try:
            obs = await self._login(password, started)
        except Exception as exc:  # a probe never raises; its detail must not carry the password
            obs = self.crashed(exc, started)
        return self.redacted(obs, password)

    async def _login(self, password: str, started: float) -> Observation:
        s = self.settings
        payload = {s.email_field: s.email, s.password_field: password}
        try:
            # The answer's body is read (to its cap) but not judged, and never logged.
            answer = await self.http.send("POST", s.url, json=payload)
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, s.url, s.timeout)
            return self.fail(detail, started, symptom)
        latency, code = answer.latency, answer.response.status_code
        metrics = {"latency_seconds": latency, "http_status": float(code)}
        said = f"login as {s.email} got HTTP {code} in {latency * 1000:.0f} ms"
        if 200 <= code < 300:
            if s.max_latency is not None and latency > s.max_latency:
                return self.fail(f"{said}, slower than the {s.max_latency * 1000:.0f} ms limit.",
                                 started, Symptom.SLOW, None, metrics)
            return self.ok(f"{said}.", started, None, metrics)
        if code >= 500:
            return self.fail(f"{said}.", started, Symptom.SERVER_ERROR, None, metrics)
        symptom = _CODES.get(code, Symptom.BAD_RESPONSE)
        why = {Symptom.WRONG_CREDENTIALS: "the known-good credentials were refused",
               Symptom.ACCOUNT_LOCKED: "the probe account is locked"}.get(symptom, "expected 2xx")
        return self.fail(f"{said}: {why}.", started, symptom, None, metrics)

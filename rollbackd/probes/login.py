"""login: POST a known-good account's credentials and judge the answer like a user would."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rollbackd.probes.base import AbsolutePath, BaseProbe, PositiveDuration
from rollbackd.probes.http import (
    NO_ANSWER,
    HttpClient,
    HttpSettings,
    LatencySettings,
    latency_below_timeout,
    transport_failure,
)
from rollbackd.probes.observation import Observation, Symptom

# Status code -> what it says about the probe account; 5xx and 2xx are ranges, handled apart.
_CODES = {
    401: Symptom.WRONG_CREDENTIALS,
    403: Symptom.WRONG_CREDENTIALS,
    423: Symptom.ACCOUNT_LOCKED,
}
# What the probe says for each; the words people read in the mail and in `status`.
SAYS = {Symptom.WRONG_CREDENTIALS: "probe credentials refused",
        Symptom.ACCOUNT_LOCKED: "probe account locked"}


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
    second_email: str | None = Field(default=None, min_length=1)
    """A second known-good account, tried only when the first is refused or locked: refused
    too, the app's login is broken (auth_broken); accepted, the trouble is the probe account's
    own (on-call is mailed, nothing is rolled back). Unset: a refused or locked probe account
    is never taken for broken login."""
    second_password_file: AbsolutePath | None = None
    """Absolute path of a file holding the second account's password."""

    @model_validator(mode="after")
    def _latency(self) -> LoginSettings:
        latency_below_timeout(self.max_latency, self.timeout)
        if (self.second_email is None) != (self.second_password_file is None):
            raise ValueError("second_email and second_password_file go together: set both or "
                             "neither")
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
        s = self.settings
        secrets: list[str] = []
        try:
            secrets.append(self._password(s.password_file))
            obs = await self._login(s.email, secrets[0], started)
            if obs.symptom in SAYS and s.second_email and s.second_password_file:
                second = self._password(s.second_password_file)
                secrets.append(second)
                obs = await self._second(obs, s.second_email, second, started)
        except _Unreadable as exc:
            obs = self.error(str(exc), started)
        except Exception as exc:  # a probe never raises; its detail must not carry a password
            obs = self.crashed(exc, started)
        for secret in secrets:
            obs = self.redacted(obs, secret)
        return obs

    def _password(self, path: Path) -> str:
        try:
            password = read_password(path)
        except OSError as exc:
            raise _Unreadable(f"cannot read the password file {str(path)!r}: "
                              f"{exc.strerror or type(exc).__name__}.") from exc
        except UnicodeDecodeError as exc:
            raise _Unreadable(f"the password file {str(path)!r} is not UTF-8 text.") from exc
        if not password:  # a 401 for an empty password would be blamed on the app
            raise _Unreadable(f"the password file {str(path)!r} is empty.")
        return password

    async def _post(self, email: str, password: str) -> tuple[float, int]:
        s = self.settings
        payload = {s.email_field: email, s.password_field: password}
        # The answer's body is read (to its cap) but not judged, and never logged.
        answer = await self.http.send("POST", s.url, json=payload)
        return answer.latency, answer.response.status_code

    async def _login(self, email: str, password: str, started: float) -> Observation:
        s = self.settings
        try:
            latency, code = await self._post(email, password)
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, s.url, s.timeout)
            return self.fail(detail, started, symptom)
        metrics = {"latency_seconds": latency, "http_status": float(code)}
        said = f"login as {email} got HTTP {code} in {latency * 1000:.0f} ms"
        if 200 <= code < 300:
            if s.max_latency is not None and latency > s.max_latency:
                return self.fail(f"{said}, slower than the {s.max_latency * 1000:.0f} ms limit.",
                                 started, Symptom.SLOW, None, metrics)
            return self.ok(f"{said}.", started, None, metrics)
        if code >= 500:
            return self.fail(f"{said}.", started, Symptom.SERVER_ERROR, None, metrics)
        symptom = _CODES.get(code, Symptom.BAD_RESPONSE)
        return self.fail(f"{said}: {SAYS.get(symptom, 'expected 2xx')}.", started, symptom, None,
                         metrics)

    async def _second(self, first: Observation, email: str, password: str,
                      started: float) -> Observation:
        """The probe account was refused or locked: does another known-good account log in?"""
        try:
            _, code = await self._post(email, password)
        except NO_ANSWER:
            return first  # no answer now says nothing about accounts; the first answer stands
        said = f"{first.detail.rstrip('.')}; second account {email} got HTTP {code}"
        if 200 <= code < 300:
            return dataclasses.replace(first, detail=f"{said}: only the probe account is "
                                       "affected.")
        if code in (401, 403):  # two known-good accounts refused: login itself is broken
            return dataclasses.replace(first, symptom=Symptom.LOGINS_REFUSED,
                                       detail=f"{said}: both known-good accounts refused.")
        if code >= 500:
            return dataclasses.replace(first, symptom=Symptom.SERVER_ERROR, detail=f"{said}.")
        # Locked too (a lockout follows wrong passwords: the probes' own doing) or unexpected.
        return dataclasses.replace(first, detail=f"{said}.")


class _Unreadable(Exception):
    """A password file that cannot be used: an error observation, not a failing target."""

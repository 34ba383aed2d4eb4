"""journey: a user's way through the app, step by step (the runbook's user acceptance test).

Each step is one HTTP request whose path, headers and JSON body may use `{name}` placeholders:
a secret read from a file at each run, or a value an earlier step captured from its answer
(a JSON path such as `$.token`, a cookie, a header). Cookies the app sets are sent on later
steps, as a browser would. The observation names the first step that failed.

What a failure means to the decision tree: the login step (the step marked `login = true`, or
the first step) fails with the symptoms of the login probe (a 5xx is auth_broken evidence, a
refused probe account is that account's trouble); any later step fails with symptom
step_failed, which no incident class claims: a broken project page is news for people, not a
reason to restore a database or roll back a release.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from rollbackd.probes.base import AbsolutePath, BaseProbe, PositiveDuration
from rollbackd.probes.http import NO_ANSWER, Answer, HttpClient, HttpSettings, transport_failure
from rollbackd.probes.json_fields import MISSING, json_equal, json_field, short
from rollbackd.probes.observation import Observation, Symptom

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
PLACEHOLDER = re.compile(r"\{(" + NAME + r")\}")
HIDDEN_FROM = 8
"""Captured strings this long or longer never appear in observations (tokens, cookies)."""
# Status code of the login step -> symptom, as the login probe tells them (rollbackd/probes/login.py).
_LOGIN_CODES = {401: Symptom.WRONG_CREDENTIALS, 403: Symptom.WRONG_CREDENTIALS,
                423: Symptom.ACCOUNT_LOCKED}


def json_path(path: str) -> str:
    """`$.items[0].id` -> `items.0.id`, the dotted form json_field reads."""
    rest = path.removeprefix("$").removeprefix(".")
    return re.sub(r"\[(\d+)\]", r".\1", rest).lstrip(".")


def _source(value: str) -> str:
    """A capture's source, checked: `$.json.path`, `cookie:NAME` or `header:NAME`."""
    if value.startswith("$"):
        if not json_path(value):
            raise ValueError(f"capture {value!r}: name a field, e.g. '$.token'")
        return value
    kind, _, name = value.partition(":")
    if kind not in ("cookie", "header") or not name:
        raise ValueError(f"capture {value!r}: use '$.json.path', 'cookie:NAME' or 'header:NAME'")
    return value


class JourneyStep(BaseModel):
    """One request of the journey and what its answer must be."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """What the step does, in the words the observation uses ("create a project")."""
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    """The HTTP method."""
    path: str = Field(pattern=r"^/")
    """Path (and query) below base_url; may use {name} placeholders, URL-quoted."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Request headers; values may use {name} placeholders, e.g. "Bearer {token}"."""
    body: JsonValue = Field(default=None, alias="json")
    """JSON body to send; its strings may use {name} placeholders (a string that is only a
    placeholder takes the captured value as it came, a number stays a number)."""
    expect_status: int = Field(default=200, ge=100, le=599)
    """The status code the step must answer with."""
    expect_json: dict[str, JsonValue] = Field(default_factory=dict)
    """JSON path ("$.status") -> the value it must have in the answer."""
    max_latency: PositiveDuration | None = None
    """An answer slower than this fails the step."""
    capture: dict[str, str] = Field(default_factory=dict)
    """Placeholder name -> where its value comes from in the answer: "$.json.path",
    "cookie:NAME" or "header:NAME". Captured values never appear in observations."""
    login: bool = False
    """This step is the log-in: its failure is judged as the login probe's (auth_broken
    evidence). Unset on every step: the first step is the log-in."""

    @model_validator(mode="after")
    def _valid(self) -> JourneyStep:
        for name, source in self.capture.items():
            if not re.fullmatch(NAME, name):
                raise ValueError(f"capture name {name!r} must be a word (letters, digits, _)")
            _source(source)
        return self


def _uses(step: JourneyStep) -> set[str]:
    """The placeholder names a step's request uses."""
    texts = [step.path, *step.headers.values()]
    found = set()
    for text in texts:
        found.update(PLACEHOLDER.findall(text))
    stack: list[JsonValue] = [step.body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(PLACEHOLDER.findall(item))
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


class JourneySettings(HttpSettings):
    kind: Literal["journey"] = "journey"
    url: str = Field(pattern=r"^https?://", alias="base_url")
    """The app's http:// or https:// base URL; each step's path is appended to it."""
    timeout: PositiveDuration = 30.0
    """Seconds the whole journey may take (and any one request); the scheduler cancels a
    longer run and records a timeout."""
    secrets: dict[str, AbsolutePath] = Field(default_factory=dict)
    """Placeholder name -> absolute path of a file holding a secret (a password), read at each
    run (one trailing newline dropped); its value never appears in observations or logs."""
    steps: list[JourneyStep] = Field(min_length=1)
    """The requests, in order; the journey stops at the first step that fails."""

    @model_validator(mode="after")
    def _placeholders(self) -> JourneySettings:
        known = set(self.secrets)
        for name in known:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"secret name {name!r} must be a word (letters, digits, _)")
        for i, step in enumerate(self.steps):
            unknown = sorted(_uses(step) - known)
            if unknown:
                raise ValueError(f"steps[{i}] ({step.name!r}) uses {{{unknown[0]}}}, which "
                                 "neither secrets nor an earlier step's capture defines")
            known |= set(step.capture)
            if step.max_latency is not None and step.max_latency >= self.timeout:
                raise ValueError(f"steps[{i}] ({step.name!r}): max_latency must be below "
                                 f"timeout ({self.timeout:g}s)")
        if sum(s.login for s in self.steps) > 1:
            raise ValueError("at most one step is the login step (login = true)")
        if len({s.name for s in self.steps}) != len(self.steps):
            raise ValueError("step names must differ: observations name the failing step")
        return self

    def login_step(self) -> int:
        return next((i for i, s in enumerate(self.steps) if s.login), 0)


class _StepFailed(Exception):
    def __init__(self, symptom: Symptom, said: str) -> None:
        super().__init__(said)
        self.symptom = symptom
        self.said = said


class _Unreadable(Exception):
    """A secret file that cannot be used: an error observation, not a failing target."""


class JourneyProbe(BaseProbe[JourneySettings]):
    kind: ClassVar[str] = "journey"
    crash_message: ClassVar[bool] = False  # a message could quote a captured token

    def __init__(self, name: str, settings: JourneySettings) -> None:
        super().__init__(name, settings)
        self.http = HttpClient(settings)

    async def run(self, started: float) -> Observation:
        s = self.settings
        values: dict[str, JsonValue] = {}
        hidden: list[str] = []  # every secret and captured text, redacted from the detail
        try:
            for name, path in s.secrets.items():
                values[name] = _secret(path)
                hidden.append(str(values[name]))
            obs = await self._walk(values, hidden, started)
        except _Unreadable as exc:
            obs = self.error(str(exc), started)
        except Exception as exc:  # a probe never raises; its detail must not carry a secret
            obs = self.crashed(exc, started)
        for secret in sorted(hidden, key=len, reverse=True):  # longest first: no partial leaks
            obs = self.redacted(obs, secret)
        return obs

    async def _walk(self, values: dict[str, JsonValue], hidden: list[str],
                    started: float) -> Observation:
        s, cookies, total = self.settings, httpx.Cookies(), 0.0
        login = s.login_step()
        for i, step in enumerate(s.steps):
            try:
                answer = await self._send(step, values, cookies)
                total += answer.latency
                cookies.extract_cookies(answer.response)
                _judge(step, answer)
                for name, source in step.capture.items():
                    value = values[name] = _capture(answer, source, name)
                    # A token or a cookie is hidden; a short value is an id or a word (hiding
                    # "7" would garble "HTTP 500 in 7 ms"), and a secret that short is none.
                    if isinstance(value, str) and len(value) >= HIDDEN_FROM:
                        hidden.append(value)
            except _StepFailed as failed:
                symptom = failed.symptom if i == login else Symptom.STEP_FAILED
                return self.fail(f"step {step.name!r}: {failed.said}", started, symptom,
                                 metrics={"latency_seconds": total, "steps_passed": float(i)})
        return self.ok(f"{len(s.steps)} steps passed in {total * 1000:.0f} ms.", started,
                       metrics={"latency_seconds": total, "steps_passed": float(len(s.steps))})

    async def _send(self, step: JourneyStep, values: dict[str, JsonValue],
                    cookies: httpx.Cookies) -> Answer:
        s = self.settings
        path = _fill(step.path, values, quote_values=True)
        url = s.url.rstrip("/") + path
        headers = {k: _fill(v, values) for k, v in step.headers.items()}
        body = _fill_json(step.body, values)
        try:
            return await self.http.send(step.method, url, json=body, headers=headers or None,
                                        cookies=cookies or None)
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, url, s.timeout)
            raise _StepFailed(symptom, detail.rstrip(".")) from exc


def _judge(step: JourneyStep, answer: Answer) -> None:
    """Raises _StepFailed when the answer is not what the step expects."""
    code, latency = answer.response.status_code, answer.latency
    said = f"HTTP {code} in {latency * 1000:.0f} ms"
    if code != step.expect_status:
        symptom = (Symptom.SERVER_ERROR if code >= 500
                   else _LOGIN_CODES.get(code, Symptom.BAD_RESPONSE))
        raise _StepFailed(symptom, f"{said}, expected {step.expect_status}")
    if step.expect_json:
        doc = _json(answer, said)
        for path, want in step.expect_json.items():
            got = json_field(doc, json_path(path))
            if got is MISSING or not json_equal(got, want):
                raise _StepFailed(Symptom.BAD_RESPONSE,
                                  f"{said}, but {path} is {short(got)}, expected {short(want)}")
    if step.max_latency is not None and latency > step.max_latency:
        raise _StepFailed(Symptom.SLOW,
                          f"{said}, slower than the {step.max_latency * 1000:.0f} ms limit")


def _json(answer: Answer, said: str) -> object:
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError):
        raise _StepFailed(Symptom.BAD_RESPONSE,
                          f"{said}, but the body is not JSON ({len(answer.body)} bytes)") from None


def _capture(answer: Answer, source: str, name: str) -> JsonValue:
    code = answer.response.status_code
    if source.startswith("$"):
        found = json_field(_json(answer, f"HTTP {code}"), json_path(source))
        if found is MISSING or found is None:
            raise _StepFailed(Symptom.BAD_RESPONSE,
                              f"HTTP {code}, but {source} is missing (capture {name})")
        return found  # type: ignore[return-value]  # parsed JSON is a JsonValue
    kind, _, key = source.partition(":")
    value = (answer.response.cookies.get(key) if kind == "cookie"
             else answer.response.headers.get(key))
    if value is None:
        raise _StepFailed(Symptom.BAD_RESPONSE,
                          f"HTTP {code}, but the answer has no {kind} {key} (capture {name})")
    return value


def _text(value: JsonValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _fill(text: str, values: dict[str, JsonValue], quote_values: bool = False) -> str:
    def one(m: re.Match[str]) -> str:
        value = _text(values[m.group(1)])
        return quote(value, safe="") if quote_values else value
    return PLACEHOLDER.sub(one, text)


def _fill_json(body: JsonValue, values: dict[str, JsonValue]) -> JsonValue:
    if isinstance(body, str):
        whole = PLACEHOLDER.fullmatch(body)
        return values[whole.group(1)] if whole else _fill(body, values)
    if isinstance(body, list):
        return [_fill_json(item, values) for item in body]
    if isinstance(body, dict):
        return {k: _fill_json(v, values) for k, v in body.items()}
    return body


def _secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise _Unreadable(f"cannot read the secret file {str(path)!r}: "
                          f"{exc.strerror or type(exc).__name__}.") from exc
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"the secret file {str(path)!r} is not UTF-8 text.") from exc
    if not secret:  # a refused empty password would be blamed on the app
        raise _Unreadable(f"the secret file {str(path)!r} is empty.")
    return secret

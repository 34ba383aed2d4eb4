"""http_health: GET a URL and judge status code, body, JSON fields and latency."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from probes.base import PositiveDuration, ProbeSettings
from probes.observation import Observation, Status, Symptom

MAX_BODY = 1 << 20
"""Bytes of a response body a probe reads at most; a health answer is small, a flood is not."""


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} must be an absolute path")
    return path


# Shared by every kind that names a file; its natural home is probes/base.py.
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class HttpSettings(ProbeSettings):
    """What every probe that speaks HTTP(S) to the target needs: where, and how to trust it."""

    url: str = Field(pattern=r"^https?://")
    """The http:// or https:// URL to request; credentials never go into it."""
    verify_tls: bool = True
    """Check the server certificate and host name (https only)."""
    ca_file: AbsolutePath | None = None
    """PEM file of the CA(s) to trust instead of the system store, e.g. for a private CA."""
    client_cert: AbsolutePath | None = None
    """PEM client certificate for mutual TLS (may also hold the key)."""
    client_key: AbsolutePath | None = None
    """PEM private key of client_cert when it is a separate file; only the path is kept."""

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, url: str) -> str:
        if "@" in urlsplit(url).netloc:
            raise ValueError("must not contain user:password@; probes keep secrets in files")
        return url

    @model_validator(mode="after")
    def _key_needs_cert(self) -> HttpSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key is set but client_cert is not")
        return self


def latency_below_timeout(max_latency: float | None, timeout: float) -> None:
    if max_latency is not None and max_latency >= timeout:
        raise ValueError(f"max_latency ({max_latency:g}s) must be below timeout ({timeout:g}s), "
                         "or a slow answer is only ever a timeout")


def _no_passphrase() -> str:
    raise ValueError("the client key is encrypted; give the probe an unencrypted key file")


def ssl_context(s: HttpSettings) -> ssl.SSLContext | bool:
    """The TLS context for one check; blocking (reads CA and key files), so run it in a thread."""
    if not s.url.startswith("https:"):
        return False  # plain HTTP: skip loading a CA store nobody uses
    ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    if not s.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.client_cert is not None:
        # A callable password: OpenSSL must never prompt on the daemon's terminal for one.
        ctx.load_cert_chain(s.client_cert, s.client_key, password=_no_passphrase)
    return ctx


def http_client(s: HttpSettings, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
    # trust_env=False: an HTTP(S)_PROXY in the daemon's environment must not reroute probes.
    return httpx.AsyncClient(timeout=s.timeout, verify=verify, follow_redirects=False,
                             trust_env=False)


# Errors that mean the request got no usable answer (TLS alerts can escape httpx unwrapped).
NO_ANSWER = (httpx.TransportError, ssl.SSLError)


async def read_capped(resp: httpx.Response, limit: int = MAX_BODY) -> bytes:
    """At most `limit` bytes of a streamed body (a larger body is cut, not read to its end)."""
    chunks, size = [], 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def transport_failure(exc: Exception, url: str, timeout: float) -> tuple[Symptom, str]:
    """The symptom and a sentence for a request that got no usable HTTP answer."""
    where = urlsplit(url).netloc
    if isinstance(exc, httpx.TimeoutException):
        return Symptom.TIMEOUT, f"{where} gave no answer within {timeout:g}s."
    reason = _reason(exc)[:200]
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError) and "disconnected" not in reason:
        return Symptom.BAD_RESPONSE, f"{where} sent a malformed HTTP answer: {reason}."
    return Symptom.UNREACHABLE, f"cannot connect to {where}: {reason}."


def _reason(exc: BaseException) -> str:
    """The most telling cause in an exception chain: a TLS reason, else the OS error's words."""
    found, seen = "", set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verify failed ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error {cause.reason or cause}"
        if isinstance(cause, OSError) and cause.errno and not found:
            found = os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return found or str(exc).strip() or type(exc).__name__


def body_text(resp: httpx.Response, body: bytes) -> str:
    try:
        return body.decode(resp.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


_MISSING = object()


def json_field(doc: object, path: str) -> object:
    """The value at a dotted path ("checks.db.status", "items.0.id"), or _MISSING."""
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def json_equal(got: object, want: object) -> bool:
    """JSON equality: true is not 1, but 1 is 1.0."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(json_equal(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(json_equal(a, b) for a, b in zip(got, want, strict=True))
    if isinstance(got, int | float) and isinstance(want, int | float):
        return got == want
    return type(got) is type(want) and got == want


def short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not _MISSING else "missing"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LatencySettings(BaseModel):
    """The latency baseline of an HTTP probe (judged by policies/latency.py; defined here because
    probes never import policies): perf_degraded when the p95 of `windows` windows in a row is
    above both the baseline p95 times `factor` and `floor`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    factor: float = Field(default=2.0, gt=1.0)
    """A window is slow when its p95 exceeds the baseline p95 times this."""
    floor: PositiveDuration = 0.25
    """Seconds a window's p95 must also exceed to be slow: a fast app is never degraded."""
    window: PositiveDuration = 60.0
    """Seconds per window; each window's p95 is judged when it ends."""
    windows: int = Field(default=3, ge=1)
    """Slow windows in a row before the probe reports perf_degraded (symptom slow)."""
    min_samples: int = Field(default=3, ge=1)
    """OK answers a window needs to be judged; a window with fewer breaks the streak."""
    baseline_samples: int = Field(default=500, ge=1)
    """Latencies the rolling baseline keeps: the newest, from good windows while all is healthy."""
    baseline_min: int = Field(default=20, ge=1)
    """Latencies the baseline needs before any window is judged."""

    @model_validator(mode="after")
    def _enough_room(self) -> LatencySettings:
        if self.baseline_min > self.baseline_samples:
            raise ValueError(f"baseline_min ({self.baseline_min}) must not exceed "
                             f"baseline_samples ({self.baseline_samples})")
        return self


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


class HttpHealthProbe:
    kind: ClassVar[str] = "http_health"

    def __init__(self, name: str, settings: HttpHealthSettings) -> None:
        self.name = name
        self.settings = settings

    def _obs(self, status: Status, detail: str, started: float, symptom: Symptom | None = None,
             version: str | None = None, metrics: dict[str, float] | None = None) -> Observation:
        return Observation(probe=self.name, kind=self.kind, status=status, detail=detail,
                           duration=time.monotonic() - started, symptom=symptom,
                           version=version, metrics=metrics or {})

    async def check(self) -> Observation:
        started = time.monotonic()
        try:
            return await self._check(started)
        except Exception as exc:  # a probe never raises: a crash is a probe error
            return self._obs(Status.ERROR, f"probe error: {type(exc).__name__}: {exc}", started,
                             Symptom.PROBE_ERROR)

    async def _check(self, started: float) -> Observation:
        s = self.settings
        verify = await asyncio.to_thread(ssl_context, s)
        sent = time.monotonic()
        try:
            async with http_client(s, verify) as client, client.stream("GET", s.url) as resp:
                body = await read_capped(resp)
        except NO_ANSWER as exc:
            symptom, detail = transport_failure(exc, s.url, s.timeout)
            return self._obs(Status.FAIL, detail, started, symptom)
        latency = time.monotonic() - sent
        metrics = {"latency_seconds": latency, "http_status": float(resp.status_code)}
        return self._judge(resp, body, latency, metrics, started)

    def _judge(self, resp: httpx.Response, body: bytes, latency: float,
               metrics: dict[str, float], started: float) -> Observation:
        s, code = self.settings, resp.status_code
        said = f"HTTP {code} in {latency * 1000:.0f} ms"
        if code >= 500:
            return self._obs(Status.FAIL, f"{said}.", started, Symptom.SERVER_ERROR, None, metrics)
        if code != s.expect_status:
            return self._obs(Status.FAIL, f"{said}, expected {s.expect_status}.", started,
                             Symptom.BAD_RESPONSE, None, metrics)
        if s.expect_body is not None and s.expect_body not in body_text(resp, body):
            return self._obs(Status.FAIL, f"{said}, but the body lacks {s.expect_body!r}.", started,
                             Symptom.BAD_RESPONSE, None, metrics)
        version, problem = self._json(body)
        if problem is not None:
            return self._obs(Status.FAIL, f"{said}, but {problem}.", started, Symptom.BAD_RESPONSE,
                             version, metrics)
        if s.max_latency is not None and latency > s.max_latency:
            return self._obs(Status.FAIL, f"{said}, slower than the {s.max_latency * 1000:.0f} ms "
                             "limit.", started, Symptom.SLOW, version, metrics)
        return self._obs(Status.OK, f"{said}.", started, None, version, metrics)

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
            if got is _MISSING or not json_equal(got, want):
                return version, f"JSON field {path!r} is {short(got)}, expected {short(want)}"
        return version, None

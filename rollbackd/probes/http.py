"""HTTP for every probe that speaks to a target: its settings, its client, and how answers fail.

A probe keeps one `HttpClient`, built from its settings once and used by every run: the TLS
context is loaded once per process and configuration (and again when a CA or certificate file
changes), plain http:// builds none, and a run needs no thread. Requests are httpx's
(`httpx.Request` and `httpx.Response`, which decode the body), sent by h11 on one asyncio protocol
per connection (rollbackd/probes/http_transport.py) instead of an `httpx.AsyncClient`, whose per-request
machinery costs more than a probe's whole exchange on loopback.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollbackd.probes.base import AbsolutePath, PositiveDuration, ProbeSettings
from rollbackd.probes.http_transport import ProbeTransport
from rollbackd.probes.observation import Symptom

MAX_BODY = 1 << 20
"""Bytes of a response body a probe reads at most; a health answer is small, a flood is not."""


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
    reuse_connections: bool = False
    """Keep the connection open between runs (cheaper, above all for https). Off by default: a
    run on a kept connection cannot see an app that has stopped accepting new ones, which is
    what its users see; a new connection per run (as a user's first request) does."""

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


class LatencySettings(BaseModel):
    """The latency baseline of an HTTP probe (judged by rollbackd/policies/latency.py; defined here because
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


def latency_below_timeout(max_latency: float | None, timeout: float) -> None:
    if max_latency is not None and max_latency >= timeout:
        raise ValueError(f"max_latency ({max_latency:g}s) must be below timeout ({timeout:g}s), "
                         "or a slow answer is only ever a timeout")


# --- TLS ----------------------------------------------------------------------------------------

def _no_passphrase() -> str:
    raise ValueError("the client key is encrypted; give the probe an unencrypted key file")


def _stamp(path: object) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten; None: no such file (yet)."""
    if path is None:
        return None
    try:
        st = os.stat(str(path))
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


_SYSTEM_STORE = ssl.get_default_verify_paths().openssl_cafile


def _tls_key(s: HttpSettings) -> tuple[Any, ...]:
    files = (s.ca_file, s.client_cert, s.client_key)
    store = None if s.ca_file or not s.verify_tls else _SYSTEM_STORE
    return (s.verify_tls, *files, *(_stamp(f) for f in (*files, store)))


def build_tls(s: HttpSettings) -> ssl.SSLContext:
    """A new TLS context for these settings; blocking (reads CA and key files)."""
    if s.verify_tls:
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    else:  # nothing is verified, so no CA store is loaded either
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.client_cert is not None:
        # A callable password: OpenSSL must never prompt on the daemon's terminal for one.
        ctx.load_cert_chain(s.client_cert, s.client_key, password=_no_passphrase)
    return ctx


_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
"""TLS contexts by settings and file stamps: one CA store load for a hundred probes alike."""


async def tls_context(s: HttpSettings) -> ssl.SSLContext:
    """The shared context for these settings, built (in a thread) when new or a file changed."""
    key = _tls_key(s)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = await asyncio.to_thread(build_tls, s)
        stale = [k for k in _contexts if k[:4] == key[:4]]  # the same files, changed since
        for k in stale:
            del _contexts[k]
        _contexts[key] = ctx
    return ctx


# --- the client ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    response: httpx.Response
    body: bytes
    latency: float
    """Seconds from sending the request to the end of the body read."""


class HttpClient:
    """One probe's HTTP client: built once from its settings, used by every run of the probe."""

    def __init__(self, s: HttpSettings) -> None:
        self.settings = s
        self.https = s.url.startswith("https:")
        self._transport: ProbeTransport | None = None
        self._built_for: tuple[Any, ...] | None = None
        self._plain: dict[tuple[str, str], httpx.Request] = {}

    async def _transport_now(self) -> ProbeTransport:
        s = self.settings
        # https: the context may have been rebuilt (a CA file changed); the loop may be new
        # (a probe checked from another event loop cannot use streams of the old one).
        ctx = await tls_context(s) if self.https else None
        key = (id(asyncio.get_running_loop()), id(ctx))
        if self._transport is None or key != self._built_for:
            if self._transport is not None:
                await self._transport.aclose()
            self._transport = ProbeTransport(ctx, keep_alive=s.reuse_connections)
            self._built_for = key
        return self._transport

    async def send(self, method: str, url: str, *, json: Any = None,
                   data: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None,
                   cookies: httpx.Cookies | None = None, read_body: bool = True) -> Answer:
        """One request, its body read up to MAX_BODY; raises what NO_ANSWER names.

        No redirect is followed, no proxy from the environment is used, and the probe's whole
        timeout covers connect, request and body."""
        transport = await self._transport_now()
        if json is None and data is None and not headers and not cookies:
            # The same request every run: built once.
            request = self._plain.get((method, url)) or self._plain.setdefault(
                (method, url), httpx.Request(method, url))
        else:
            request = httpx.Request(method, url, json=json, data=data, headers=headers,
                                    cookies=cookies)
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await transport.handle_async_request(request)
                try:
                    body = await read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout("no answer within the timeout", request=request) from None
        return Answer(response, body, time.monotonic() - sent)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None


# Errors that mean the request got no usable answer (TLS alerts can escape unwrapped).
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

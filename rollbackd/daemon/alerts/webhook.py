"""The Alertmanager webhook receiver: a small HTTP/1.1 endpoint on loopback, bearer token only.

POST /webhook with Alertmanager's version 4 JSON. 200 once the alerts reached their probes;
401 for a missing or wrong token, 400 for a body that is not a notification; nothing a client
sends can stop the daemon. One request per connection (the answer says Connection: close).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from rollbackd.daemon.alerts.payload import Notification, PayloadError, parse
from rollbackd.daemon.alerts.router import Delivery
from rollbackd.daemon.alerts.settings import AlertsSettings
from rollbackd.daemon.metrics import Metrics

log = logging.getLogger("rollbackd.alerts")

PATH = "/webhook"
MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
"""Alertmanager caps a notification's alerts (max_alerts); a megabyte is far above a real one."""
READ_TIMEOUT = 10.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 500: "Internal Server Error"}

Deliver = Callable[[Notification], Awaitable[Delivery]]


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WebhookServer:
    def __init__(self, settings: AlertsSettings, deliver: Deliver, metrics: Metrics) -> None:
        self.settings = settings
        self.deliver = deliver
        self.metrics = metrics
        self._token = settings.token_file.value.strip().encode()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from the configured one only when that is 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.settings.host, self.settings.port, limit=MAX_HEAD)
        log.info("alerts status=listening address=%s:%d path=%s", self.settings.host, self.port,
                 PATH)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            code, doc = await self._answer(reader)
        except HttpError as exc:
            code, doc = exc.code, {"error": exc.message}
        except Exception:  # a bug here must cost one request, never the daemon
            log.exception("alerts status=error reason=request handling crashed")
            code, doc = 500, {"error": "internal error"}
        self.metrics.webhook_requests.labels(str(code)).inc()
        if code != 200:
            log.warning("alerts status=rejected code=%d reason=%r", code, doc.get("error"))
        body = json.dumps(doc).encode()
        head = (f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if code == 401:
            head += 'WWW-Authenticate: Bearer realm="rollbackd"\r\n'
        try:
            writer.write(head.encode() + b"\r\n" + body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                method, path, headers = await _read_head(reader)
                # Read before judging: closing on unread bytes would reset the connection, and
                # the client would see that instead of the answer.
                body = await _read_body(reader, headers) if method == "POST" else b""
        except TimeoutError:
            raise HttpError(408, f"request not complete within {READ_TIMEOUT:g}s") from None
        self._authorize(headers)
        if path.split("?", 1)[0] != PATH:
            raise HttpError(404, f"no such path; Alertmanager posts to {PATH}")
        if method != "POST":
            raise HttpError(405, "only POST")
        try:
            note = parse(body)
        except PayloadError as exc:
            raise HttpError(400, str(exc)) from None
        done = await self.deliver(note)
        return 200, {"status": "ok", **asdict(done)}

    def _authorize(self, headers: dict[str, str]) -> None:
        scheme, _, given = headers.get("authorization", "").strip().partition(" ")
        # Constant time: the comparison must not tell an attacker how much of a guess was right.
        right = hmac.compare_digest(given.strip().encode(), self._token)
        if scheme.lower() != "bearer" or not right:
            raise HttpError(401, "missing or wrong bearer token")


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(413, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpError(411, "send a Content-Length; chunked bodies are not accepted")
    length = headers.get("content-length")
    if length is None or not (length.isascii() and length.isdigit()):  # "²".isdigit() too
        raise HttpError(411, "Content-Length required")
    if int(length) > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    try:
        return await reader.readexactly(int(length))
    except asyncio.IncompleteReadError:
        raise HttpError(400, "body shorter than its Content-Length") from None

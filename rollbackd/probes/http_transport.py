"""httpx's transport for probes: HTTP/1.1 by h11 on one asyncio protocol per connection.

httpx's own transport goes through httpcore: a pool, anyio locks, trace hooks and asyncio
streams over a second TLS protocol layer. On loopback that machinery cost more CPU than the
exchange itself, per run, for ever. A probe sends one request at a time on the event loop it
already runs on, so a connection here is one `asyncio.Protocol` feeding h11 (the parser
httpcore itself uses), made by `loop.create_connection` (TLS included), and failures come out
as httpx's exceptions, as from `httpx.AsyncHTTPTransport`.

TLS sessions are not resumed: CPython copies a session by encoding and decoding it (the
server's certificate included) each time one is read from a connection or offered to the next,
which cost more CPU than the shorter handshake saved (bench/peer.py, https). A probe that should
not pay a handshake per run keeps its connection (`reuse_connections`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import h11
import httpx

MAX_HEAD = 100 * 1024
"""Bytes of a response's status line and headers at most (httpcore's limit)."""
READ_AHEAD = 256 * 1024
"""Bytes received and not yet consumed before the socket stops being read (a flood waits)."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods sent again on a new connection when a kept one was closed before any answer."""


class _Connection(asyncio.Protocol):
    """One connection: what the loop hands in goes to h11; the request's task waits for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.heard = False
        """Any byte came in since the current request was sent."""
        self.first = b""
        """The request, written as soon as the connection is made: with TLS 1.3 it leaves in
        the same packet as the handshake's last message, not in one of its own."""
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- called by the event loop -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.first:
            transport.write(self.first)
            self.first = b""

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.h11.receive_data(data)
        if len(self.h11.trailing_data[0]) > READ_AHEAD and not self._paused \
                and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- called by the request's task ---------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Idle, open, and nothing unasked-for came in meanwhile."""
        return (not self.eof and not self.lost and self.h11.our_state is h11.IDLE
                and not self.h11.trailing_data[0])

    def encode(self, events: list[h11.Event]) -> bytes:
        self.heard = False
        return b"".join(self.h11.send(e) or b"" for e in events)

    def send(self, events: list[h11.Event]) -> None:
        assert self.transport is not None
        self.transport.write(self.encode(events))

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if self.eof or self.lost:
                self._at_end()
                continue
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _at_end(self) -> None:
        """The peer is gone and h11 needs more: why, in httpx's words (as httpcore says it)."""
        if self.error is not None:
            raise httpx.ReadError(str(self.error) or type(self.error).__name__) from self.error
        if self.h11.their_state is h11.SEND_RESPONSE and not self.h11.trailing_data[0]:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if self.h11.trailing_data[1]:  # EOF already told, and still not enough
            raise httpx.RemoteProtocolError("peer closed connection without sending complete "
                                            "message body")
        self.h11.receive_data(b"")

    def close(self, graceful: bool = False) -> None:
        """Graceful: a TLS close_notify first, for a server still waiting for the next request.
        Otherwise the socket just closes: the server is gone or closing (it said so), the
        exchange failed, or a body past the cap would otherwise be read on (to its end)."""
        if self.transport is None:
            return
        if graceful and not (self.eof or self.lost):
            self.transport.close()
        else:
            self.transport.abort()


class _Body(httpx.AsyncByteStream):
    """The response body as h11 parses it; the connection is kept for the next request only
    when the body was read to its end and both sides allow it."""

    def __init__(self, conn: _Connection, owner: ProbeTransport) -> None:
        self._conn, self._owner = conn, owner
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self._done:
            event = await self._conn.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._done = True

    async def aclose(self) -> None:
        self._owner.release(self._conn, self._done)


class ProbeTransport(httpx.AsyncBaseTransport):
    """A new connection per request, closed with its response; with `keep_alive`, the last one
    kept open for the next request while the server keeps it."""

    def __init__(self, tls: ssl.SSLContext | None, keep_alive: bool) -> None:
        self._tls, self._keep_alive = tls, keep_alive
        self._kept: _Connection | None = None
        self._heads: tuple[httpx.Request, h11.Request] | None = None

    def _head(self, request: httpx.Request) -> h11.Request:
        """The request line and headers as h11 takes them; the same request object reuses it."""
        if self._heads is not None and self._heads[0] is request:
            return self._heads[1]
        head = h11.Request(method=request.method, target=request.url.raw_path,
                           headers=request.headers.raw)
        self._heads = (request, head)
        return head

    async def _connect(self, url: httpx.URL, events: list[h11.Event]) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop)
        conn.first = conn.encode(events)
        host = url.raw_host.decode("ascii")
        https = url.scheme == "https"
        if https and self._tls is None:
            raise httpx.UnsupportedProtocol("https without a TLS context")
        try:
            await loop.create_connection(lambda: conn, host, url.port or (443 if https else 80),
                                         ssl=self._tls if https else None,
                                         server_hostname=host if https else None)
        except OSError as exc:  # ssl.SSLError too: a failed handshake
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        events: list[h11.Event] = [self._head(request)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        kept, self._kept = self._kept, None
        if kept is not None and not kept.reusable:
            kept.close(graceful=True)
            kept = None
        conn = kept
        try:
            if conn is None:
                conn = await self._connect(request.url, events)
            else:
                conn.send(events)
            try:
                event = await self._response(conn)
            except httpx.TransportError:
                # A kept connection the server closed as this request went out: once more, on
                # a new one, when nothing came back and sending again cannot do harm.
                if conn is not kept or conn.heard or request.method not in IDEMPOTENT:
                    raise
                conn.close()
                conn = None
                conn = await self._connect(request.url, events)
                event = await self._response(conn)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return httpx.Response(
            event.status_code, headers=event.headers, stream=_Body(conn, self),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
            request=request)

    @staticmethod
    async def _response(conn: _Connection) -> h11.Response:
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")

    def release(self, conn: _Connection, complete: bool) -> None:
        """The response is done with: keep its connection, or close it."""
        if complete and self._keep_alive and conn.h11.our_state is h11.DONE \
                and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            if conn.reusable:
                if self._kept is not None:
                    self._kept.close(graceful=True)
                self._kept = conn
                return
        conn.close(graceful=complete and conn.h11.their_state is h11.DONE)

    async def aclose(self) -> None:
        if self._kept is not None:
            self._kept.close(graceful=True)
            self._kept = None



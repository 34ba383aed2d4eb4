"""httpx's transport for probes: httpcore's HTTP/1.1 over plain asyncio streams.

httpcore's default network backend goes through anyio (a task group and a happy-eyeballs race
per connect); a probe connects to one address on the event loop it already runs on, so
asyncio's own streams do, at a fraction of the CPU. Exceptions come out as httpx's, as from
`httpx.AsyncHTTPTransport`.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

# httpcore's errors -> httpx's, most specific first (as httpx maps them).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except OSError as exc:  # ssl.SSLError too: httpcore's anyio backend maps them alike
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            await self._writer.drain()
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except OSError as exc:
            self._writer.close()
            raise httpcore.ConnectError(exc) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "is_readable":  # an idle kept connection the server has closed
            sock = self._writer.get_extra_info("socket")
            return sock is not None and bool(select.select([sock], [], [], 0)[0])
        if info in ("socket", "client_addr", "server_addr"):
            return self._writer.get_extra_info({"client_addr": "sockname",
                                                "server_addr": "peername"}.get(info, info))
        return None


class _Backend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        return _Stream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("probes speak TCP")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Any, connection: httpcore.AsyncHTTPConnection | None) -> None:
        self._stream, self._connection = stream, connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._connection is not None:
                await self._connection.aclose()


class ProbeTransport(httpx.AsyncBaseTransport):
    """A new connection per request, closed with its response; with `keep_alive`, one
    connection kept in a pool of one between requests."""

    def __init__(self, tls: ssl.SSLContext | None, keep_alive: bool) -> None:
        self._tls, self._backend = tls, _Backend()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls, max_connections=1, max_keepalive_connections=1,
            network_backend=self._backend) if keep_alive else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        assert isinstance(request.stream, httpx.AsyncByteStream)
        port = url.port or (443 if url.raw_scheme == b"https" else 80)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=port,
                             target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        # Without keep-alive a pool only adds locking: one connection, used once.
        connection = None if self._pool is not None else httpcore.AsyncHTTPConnection(
            origin=req.url.origin, ssl_context=self._tls, network_backend=self._backend)
        with _as_httpx():
            try:
                resp = await (connection or self._pool).handle_async_request(req)  # type: ignore[union-attr]
            except BaseException:
                if connection is not None:
                    await connection.aclose()
                raise
        return httpx.Response(resp.status, headers=resp.headers,
                              stream=_Body(resp.stream, connection), extensions=resp.extensions,
                              request=request)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

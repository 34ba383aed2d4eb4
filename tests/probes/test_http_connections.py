"""reuse_connections: by default a run opens a new connection, so it sees an app that has
stopped accepting them; kept connections are cheaper but blind to that (a real server)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.probes.http import tls_context
from rollbackd.probes.http_health import HttpHealthProbe, HttpHealthSettings
from rollbackd.probes.observation import Status, Symptom
from tests.probes.servers import HttpServer, Pki, make_pki

BODY = b'{"status": "ok"}'


class KeepAliveServer:
    """HTTP/1.1 with keep-alive on 127.0.0.1; `stop_accepting()` leaves the listening socket
    open but never accepts again, as an app whose accept loop has died: the kernel still
    completes handshakes into the backlog, and nobody answers them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.accepting = threading.Event()
        self.accepting.set()
        self.parked = threading.Event()
        self.closing = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            if not self.accepting.is_set():
                self.parked.set()
                self.closing.wait(0.05)
                continue
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        with conn:
            while not self.closing.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

    def stop_accepting(self) -> None:
        """Returns once the accept loop is parked (not inside an accept() that could still
        take the next connection)."""
        self.accepting.clear()
        self.parked.wait()

    def close(self) -> None:
        self.closing.set()
        for thread in self.threads:
            thread.join()
        self.listener.close()


@pytest.fixture
def server() -> Iterator[KeepAliveServer]:
    srv = KeepAliveServer()
    yield srv
    srv.close()


def probe(port: int, **kw: object) -> HttpHealthProbe:
    return HttpHealthProbe("health", HttpHealthSettings(
        url=f"http://127.0.0.1:{port}/health", timeout=0.5, expect_json={"status": "ok"}, **kw))


async def test_by_default_each_run_connects_anew_and_sees_an_app_that_stopped_accepting(
        server: KeepAliveServer) -> None:
    health = probe(server.port)
    assert (await health.check()).ok
    assert (await health.check()).ok
    assert server.accepted == 2  # a connection per run, though the server keeps them alive
    server.stop_accepting()
    obs = await health.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.TIMEOUT), obs.detail
    assert server.accepted == 2


async def test_reused_connection_is_cheaper_but_blind_to_new_connections_failing(
        server: KeepAliveServer) -> None:
    health = probe(server.port, reuse_connections=True)
    assert (await health.check()).ok
    assert (await health.check()).ok
    assert server.accepted == 1  # one connection, kept
    server.stop_accepting()
    obs = await health.check()
    # What reuse_connections documents: the kept connection still answers, though no new user
    # could connect. That is why it is off by default.
    assert obs.ok, obs.detail
    assert server.accepted == 1
    await health.http.aclose()


def test_reuse_connections_is_off_by_default() -> None:
    assert HttpHealthSettings(url="http://127.0.0.1:1/").reuse_connections is False


async def test_tls_context_is_shared_and_rebuilt_when_the_ca_file_changes(
        pki: Pki, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    with HttpServer(tls=pki.server_context()) as srv:
        one, two = (HttpHealthProbe(n, HttpHealthSettings(url=srv.url, ca_file=ca, timeout=2.0))
                    for n in ("one", "two"))
        assert (await one.check()).ok and (await two.check()).ok
        # Two probes alike: one context, one CA load.
        assert await tls_context(one.settings) is await tls_context(two.settings)
        ca.write_bytes(make_pki(tmp_path / "other").ca.read_bytes())  # another CA
        obs = await one.check()
        assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE), obs.detail
        assert "TLS certificate verify failed" in obs.detail
        ca.write_bytes(pki.ca.read_bytes())  # and back
        assert (await two.check()).ok


class IdleClosingServer:
    """HTTP/1.1 keep-alive on 127.0.0.1 that answers the first request of each connection and
    then either closes it after `idle` seconds, or (`drop_second`) reads the second request and
    closes without an answer: the race of a server closing a kept connection as it is used."""

    def __init__(self, idle: float = 0.05, drop_second: bool = False) -> None:
        self.idle, self.drop_second = idle, drop_second
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> IdleClosingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            await writer.drain()
            if self.drop_second:
                await reader.readuntil(b"\r\n\r\n")
            else:
                await asyncio.sleep(self.idle)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_kept_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with IdleClosingServer(idle=0.05) as srv:
        health = probe(srv.port, reuse_connections=True)
        assert (await health.check()).ok
        await asyncio.sleep(0.3)  # the server closed it meanwhile
        obs = await health.check()
        assert obs.ok, obs.detail
        assert srv.accepted == 2
        await health.http.aclose()


async def test_a_get_on_a_kept_connection_closed_under_it_is_sent_once_more_on_a_new_one() -> None:
    async with IdleClosingServer(drop_second=True) as srv:
        health = probe(srv.port, reuse_connections=True)
        assert (await health.check()).ok
        obs = await health.check()  # the kept connection is closed with no answer: once more
        assert obs.ok, obs.detail
        assert srv.accepted == 2
        await health.http.aclose()


async def test_without_reuse_a_server_closing_with_no_answer_is_unreachable() -> None:
    """Nothing is sent twice on a new connection: the run fails, as the server said nothing."""
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    async with server:
        obs = await probe(server.sockets[0].getsockname()[1]).check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE), obs.detail
    assert "Server disconnected without sending a response" in obs.detail

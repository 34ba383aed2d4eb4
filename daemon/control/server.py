"""The control socket server: Unix socket, peer credentials checked, bounded JSON-line requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.control.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    CommandError,
    Reply,
)

log = logging.getLogger("rollbackd.control")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Handler = Callable[[str, dict[str, Any], Peer], Awaitable[Any]]


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class ControlServer:
    def __init__(self, path: Path, handler: Handler, allowed_uids: list[int]) -> None:
        self.path = path
        self.handler = handler
        self.allowed = {0, os.getuid(), *allowed_uids}
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crash would make bind fail
        self.server = await asyncio.start_unix_server(
            self._serve_client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._one_request(reader, writer)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except Exception as exc:  # a client going away must never disturb the daemon
            log.debug("control status=client-error reason=%s", type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> Reply:
        peer = peer_of(writer)
        try:
            # Read before refusing a peer, so its write never meets a closed socket (EPIPE)
            # and it always gets to read the refusal.
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        except TimeoutError:
            return {"ok": False, "code": "timeout", "error": "no complete request line in time"}
        except ValueError:  # the StreamReader's limit: longer than MAX_REQUEST_BYTES
            return {"ok": False, "code": "too_large",
                    "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        if peer.uid not in self.allowed:
            log.warning("control status=refused uid=%d pid=%d", peer.uid, peer.pid)
            return {"ok": False, "code": "forbidden",
                    "error": f"uid {peer.uid} may not use this socket"}
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or absurdly deep nesting
            return {"ok": False, "code": "bad_request", "error": "request is not one JSON line"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "code": "bad_request",
                    "error": 'expected {"cmd": "...", "args": {...}}'}
        args = req.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "code": "bad_request", "error": "args must be an object"}
        try:
            return {"ok": True, "result": await self.handler(req["cmd"], args, peer)}
        except CommandError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # one catch-all: a command bug is an error reply, not a crash
            log.exception("control cmd=%s status=crashed", req["cmd"])
            return {"ok": False, "code": "internal", "error": f"{type(exc).__name__}: {exc}"}

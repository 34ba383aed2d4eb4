"""The control socket server: Unix socket, peer credentials checked, bounded JSON-line requests."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollbackd.daemon.control.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    CommandError,
    Reply,
    nested_deeper,
    too_deep,
    version_error,
)

log = logging.getLogger("rollbackd.control")


# Linux >= 4.13; Python does not name it. The peer's supplementary groups at connect time.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


class ControlSetupError(Exception):
    """The socket cannot be set up as configured; the message names the setting."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] | None = None
    """Supplementary groups from SO_PEERGROUPS; None where the kernel cannot tell."""


Handler = Callable[[str, dict[str, Any], Peer], Awaitable[Any]]
Forbidden = Callable[[Peer, str], None]
"""Audits a request from a peer the socket refused: the peer and the command it named."""


def _peer_groups(sock: socket.socket) -> tuple[int, ...] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # 1024 bytes is the most Python's getsockopt reads: 256 groups.
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:  # an old kernel, or more groups than fit: fall back to the group database
        return None
    return struct.unpack(f"{len(raw) // 4}I", raw)


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, _peer_groups(sock))


def _gid(name: str, setting: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlSetupError(f"daemon.{setting}: no group named {name!r} on this host") \
            from None


def _member_by_database(uid: int, gids: frozenset[int]) -> bool:
    """Group membership from /etc/group and /etc/passwd, when the kernel gave no groups."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid in gids or any(
        user.pw_name in g.gr_mem for g in grp.getgrall() if g.gr_gid in gids)


BUSY: Reply = {"ok": False, "code": "busy",
              "error": "too many control connections at once (daemon.max_control_connections); "
                       "try again"}


class ControlServer:
    def __init__(self, path: Path, handler: Handler, allowed_uids: list[int],
                 socket_group: str | None = None, allowed_groups: list[str] | None = None,
                 max_connections: int = 64, on_forbidden: Forbidden | None = None) -> None:
        self.path = path
        self.on_forbidden = on_forbidden
        self.max_connections = max_connections
        """Beyond this many clients at once, a new one is refused at once: idle clients must
        not use up the descriptors the probes need."""
        self.active = 0
        self._refused = 0
        """Connections refused since the burst began (0: not refusing)."""
        self.handler = handler
        self.allowed = {0, os.getuid(), *allowed_uids}
        self.socket_group = socket_group
        self.allowed_group_names = list(allowed_groups or [])
        self.allowed_gids = frozenset(_gid(g, "allowed_groups") for g in self.allowed_group_names)
        self.server: asyncio.AbstractServer | None = None

    def permits(self, peer: Peer) -> bool:
        if peer.uid in self.allowed:
            return True
        if not self.allowed_gids:
            return False
        if peer.gid in self.allowed_gids:
            return True
        if peer.groups is not None:
            return bool(self.allowed_gids.intersection(peer.groups))
        return _member_by_database(peer.uid, self.allowed_gids)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crash would make bind fail
        gid = _gid(self.socket_group, "socket_group") if self.socket_group else os.getgid()
        self.server = await asyncio.start_unix_server(
            self._serve_client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            msg = (f"daemon.socket_group: cannot give {self.path} to group {_group_name(gid)!r}: "
                   "the daemon's user is not a member of it")
            log.error("control status=failed reason=%r", msg)
            raise ControlSetupError(msg) from None
        os.chmod(self.path, 0o660)
        log.info("control status=listening socket=%s group=%s mode=0660", self.path,
                 _group_name(gid))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self._refuse(writer)
            return
        if self._refused:
            log.warning("control status=accepting refused=%d max_connections=%d", self._refused,
                        self.max_connections)
            self._refused = 0
        self.active += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.active -= 1

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Close at once, with a best-effort `busy` line: nothing waits on this client."""
        if not self._refused:  # once per burst; the end of the burst says how many
            log.warning("control status=refusing reason=too many connections "
                        "max_connections=%d", self.max_connections)
        self._refused += 1
        with contextlib.suppress(Exception):
            writer.write(json.dumps(BUSY).encode() + b"\n")
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader,
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
        if not self.permits(peer):
            log.warning("control status=refused uid=%d gid=%d pid=%d", peer.uid, peer.gid,
                        peer.pid)
            if self.on_forbidden is not None:
                self.on_forbidden(peer, _named_command(line))
            return {"ok": False, "code": "forbidden",
                    "error": f"uid {peer.uid} may not use this socket (daemon.allowed_uids "
                             "and daemon.allowed_groups name who may)"}
        try:
            req = json.loads(line)
        except RecursionError:  # deeper than even the parser goes (some thousand levels)
            return too_deep()
        except ValueError:  # bad JSON or bad UTF-8
            return {"ok": False, "code": "bad_request", "error": "request is not one JSON line"}
        if nested_deeper(req):  # what parsed still must not reach the recursive audit redaction
            return too_deep()
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "code": "bad_request",
                    "error": 'expected {"cmd": "...", "args": {...}}'}
        args = req.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "code": "bad_request", "error": "args must be an object"}
        refused = version_error(req)
        if refused is not None:
            return refused
        try:
            return {"ok": True, "result": await self.handler(req["cmd"], args, peer)}
        except CommandError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # one catch-all: a command bug is an error reply, not a crash
            log.exception("control cmd=%s status=crashed", req["cmd"])
            return {"ok": False, "code": "internal", "error": f"{type(exc).__name__}: {exc}"}


def _named_command(line: bytes) -> str:
    """The command a refused request names, for the audit log (never its arguments)."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):
        return "(unreadable)"
    cmd = req.get("cmd") if isinstance(req, dict) else None
    return cmd[:64] if isinstance(cmd, str) else "(unreadable)"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)

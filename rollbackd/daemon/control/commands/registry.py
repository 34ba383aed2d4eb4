"""The one command registry: name -> function and help; dispatch audits every call."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.redact import redact
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.refusal import Refused

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace

log = logging.getLogger("rollbackd.control")

CommandFunc = Callable[["DaemonFace", dict[str, Any], Peer], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    func: CommandFunc
    help: str


COMMANDS: dict[str, Command] = {}

def command(name: str, help: str) -> Callable[[CommandFunc], CommandFunc]:
    def register(func: CommandFunc) -> CommandFunc:
        if name in COMMANDS:
            raise ValueError(f"control command {name!r} registered twice")
        COMMANDS[name] = Command(func, help)
        return func

    return register


async def dispatch(d: DaemonFace, cmd: str, args: dict[str, Any], peer: Peer) -> Any:
    found = COMMANDS.get(cmd)
    shown = redact(args)
    if found is None:
        d.journal.audit.record(peer.uid, peer.pid, cmd, shown, "unknown_command")
        raise CommandError("unknown_command", f"no such command {cmd!r}; try 'help'")
    try:
        result = await found.func(d, args, peer)
    except Refused as exc:  # the desk's and the executors' refusals answer like commands'
        _audit(d, peer, cmd, shown, f"error:{exc.code}")
        if isinstance(exc, CommandError):
            raise
        raise CommandError(exc.code, str(exc)) from None
    except Exception as exc:  # audited too: every command leaves a row, crashed or not
        _audit(d, peer, cmd, shown, f"error:internal:{type(exc).__name__}")
        raise
    _audit(d, peer, cmd, shown, "ok")
    return result


def audit_refused(d: DaemonFace, peer: Peer, cmd: str) -> None:
    """A peer the socket refused: audited with the command it named, never its arguments."""
    _audit(d, peer, cmd, {}, "error:forbidden")


def _audit(d: DaemonFace, peer: Peer, cmd: str, shown: Any, outcome: str) -> None:
    try:
        d.journal.audit.record(peer.uid, peer.pid, cmd, shown, outcome)
    except Exception as exc:  # a full disk must not silence `status`: the log keeps the row
        log.error("audit status=unwritable cmd=%s uid=%s pid=%s outcome=%s reason=%r", cmd,
                  peer.uid, peer.pid, outcome, str(exc))

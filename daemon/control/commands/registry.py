"""The one command registry: name -> function and help; dispatch audits every call."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.control.protocol import CommandError
from daemon.control.server import Peer

if TYPE_CHECKING:
    from daemon.app import Daemon

log = logging.getLogger("rollbackd.control")

CommandFunc = Callable[["Daemon", dict[str, Any], Peer], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    func: CommandFunc
    help: str


COMMANDS: dict[str, Command] = {}

# Argument names whose values never reach the audit log.
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|dsn|credential", re.IGNORECASE)
REDACTED = "<redacted>"


def command(name: str, help: str) -> Callable[[CommandFunc], CommandFunc]:
    def register(func: CommandFunc) -> CommandFunc:
        if name in COMMANDS:
            raise ValueError(f"control command {name!r} registered twice")
        COMMANDS[name] = Command(func, help)
        return func

    return register


def redact(value: Any) -> Any:
    """A copy of request arguments fit for the audit log: secret-looking keys are blanked."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


async def dispatch(d: Daemon, cmd: str, args: dict[str, Any], peer: Peer) -> Any:
    found = COMMANDS.get(cmd)
    shown = redact(args)
    if found is None:
        d.journal.audit.record(peer.uid, peer.pid, cmd, shown, "unknown_command")
        raise CommandError("unknown_command", f"no such command {cmd!r}; try 'help'")
    try:
        result = await found.func(d, args, peer)
    except CommandError as exc:
        _audit(d, peer, cmd, shown, f"error:{exc.code}")
        raise
    except Exception as exc:  # audited too: every command leaves a row, crashed or not
        _audit(d, peer, cmd, shown, f"error:internal:{type(exc).__name__}")
        raise
    _audit(d, peer, cmd, shown, "ok")
    return result


def audit_refused(d: Daemon, peer: Peer, cmd: str) -> None:
    """A peer the socket refused: audited with the command it named, never its arguments."""
    _audit(d, peer, cmd, {}, "error:forbidden")


def _audit(d: Daemon, peer: Peer, cmd: str, shown: Any, outcome: str) -> None:
    try:
        d.journal.audit.record(peer.uid, peer.pid, cmd, shown, outcome)
    except Exception as exc:  # a full disk must not silence `status`: the log keeps the row
        log.error("audit status=unwritable cmd=%s uid=%s pid=%s outcome=%s reason=%r", cmd,
                  peer.uid, peer.pid, outcome, str(exc))

"""The daemon process itself: reload, help, and the freeze test hook."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from daemon.control.commands.registry import COMMANDS, command
from daemon.control.protocol import CommandError
from daemon.control.server import Peer

if TYPE_CHECKING:
    from daemon.control.face import DaemonFace


@command("reload", "re-read the config file; an invalid one is rejected and the old one kept")
async def _reload(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    if not d.reload():
        raise CommandError("reload_failed", "config rejected; the previous one keeps running "
                           "(the daemon log names each error)")
    return {"targets": sorted(d.monitors)}


@command("help", "the commands this daemon knows")
async def _help(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    return {name: c.help for name, c in sorted(COMMANDS.items())}


@command("freeze", "test hook: block the event loop for `seconds` (only with test_hooks)")
async def _freeze(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    if not d.config.daemon.test_hooks:
        raise CommandError("forbidden", "freeze needs daemon.test_hooks = true")
    seconds = float(args.get("seconds", 1))
    time.sleep(min(seconds, 120))  # deliberately blocking: simulates a hung event loop
    return {"froze": seconds}

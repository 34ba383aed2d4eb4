"""The daemon process itself: reload, help, and the freeze test hook."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.commands.registry import COMMANDS, command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


@command("reload", "re-read the config file; an invalid one is rejected and the old one kept; "
         "keys read only at start keep their old value until a restart, and are named")
async def _reload(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    waiting = d.reload()
    if waiting is None:
        raise CommandError("reload_failed", "config rejected; the previous one keeps running "
                           "(the daemon log names each error)")
    return {"targets": sorted(d.monitors),
            "needs_restart": [{"key": w.key, "old": w.old, "new": w.new} for w in waiting]}


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


@command("exhaust-fds", "test hook: open files until EMFILE, hold them `seconds` (only with "
                        "test_hooks)")
async def _exhaust_fds(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    if not d.config.daemon.test_hooks:
        raise CommandError("forbidden", "exhaust-fds needs daemon.test_hooks = true")
    seconds = min(float(args.get("seconds", 1)), 120)
    held: list[int] = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            break

    def release() -> None:
        for fd in held:
            os.close(fd)

    asyncio.get_running_loop().call_later(seconds, release)
    return {"held": len(held), "seconds": seconds}

"""Operator overrides: pause, silence and resume, each with a reason and an expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.control.commands.args import duration_arg, target_arg, text_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.server import Peer
from rollbackd.policies.overrides import Override, OverrideKind

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


def _override(d: DaemonFace, kind: OverrideKind, args: dict[str, Any], peer: Peer) -> Any:
    reason = text_arg(args, "reason", hint=": say why, for the audit log (--reason)")
    assert reason is not None
    target = target_arg(d, args)
    until = now_utc() + timedelta(seconds=duration_arg(args))
    d.journal.overrides.add(Override(kind, target, until, reason, f"uid {peer.uid}"))
    return {"kind": kind, "target": target or "*", "until": until, "reason": reason}


@command("pause", "observe only, act on nothing: target (or all), for DURATION, reason TEXT")
async def _pause(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    return _override(d, OverrideKind.PAUSE, args, peer)


@command("silence", "act as usual but send no mail: target (or all), for DURATION, reason TEXT")
async def _silence(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    return _override(d, OverrideKind.SILENCE, args, peer)


@command("resume", "end pause and silence overrides for a target (or the global ones)")
async def _resume(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target = target_arg(d, args)
    ended = sum(d.journal.overrides.end(k, target) for k in ("pause", "silence"))
    return {"target": target or "*", "ended": ended}

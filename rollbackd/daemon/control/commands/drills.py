"""Recovery drills by hand: start one on a staging target, follow it, list drills and schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.commands.args import int_arg, target_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.drills.service import DrillRefused

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


def _scenarios(args: dict[str, Any]) -> list[str] | None:
    value = args.get("scenario")
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise CommandError("bad_args", "scenario must be a scenario name or a list of them")
    return items


@command("drill", "break a staging target on purpose and time its recovery: target, scenario "
         "(one or a list; default: the configured ones); returns at once, follow with drills id")
async def _drill(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target = args.get("target")
    if not isinstance(target, str) or not target:
        raise CommandError("bad_args", "a target is required")
    try:
        run = d.drills.start(target, _scenarios(args), f"rollbackctl (uid {peer.uid})")
    except DrillRefused as exc:
        raise CommandError(exc.code, str(exc)) from None
    return run.to_dict()


def _when(value: Any) -> str | None:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else None


@command("drills", "one drill (id), or each staging target's schedule and the recent drills")
async def _drills(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    if args.get("id") is not None:
        drill_id = int_arg(args, "id", 0, 1, 2**62)
        found = d.drills.get(drill_id)
        if found is None:
            raise CommandError("not_found", f"no drill {drill_id}")
        return found
    target = target_arg(d, args)
    targets = [{**s, "since": _when(s["since"]), "last_success": _when(s["last_success"]),
                "next_due": _when(s["next_due"])}
               for s in d.drills.status() if target in (None, s["target"])]
    limit = int_arg(args, "limit", 10, 1, 1000)
    return {"targets": targets, "drills": d.drills.store.recent(limit, target)}

"""A person's decision on a waiting incident: approve runs its plan (or the lockdown), deny not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.clock import now_utc
from daemon.control.commands.args import incident_arg
from daemon.control.commands.emergency import LOCKDOWN, deny_lockdown, run_lockdown
from daemon.control.commands.registry import command
from daemon.control.protocol import CommandError
from daemon.control.server import Peer

if TYPE_CHECKING:
    from daemon.app import Daemon


@command("approve", "run the plan of an incident waiting for approval, or resume a held one")
async def _approve(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    inc = incident_arg(d, args)
    if inc.state not in ("awaiting_approval", "held"):
        raise CommandError("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                           "approval")
    if inc.target not in d.monitors:
        raise CommandError("not_found", f"target {inc.target} is no longer configured")
    if inc.incident_class == LOCKDOWN:
        return await run_lockdown(d, inc, peer)
    monitor = d.monitors[inc.target]
    plan = monitor.stored_plan(inc)
    if plan is None:
        raise CommandError("no_plan", f"incident {inc.id} has no plan to run; act by hand")
    async with monitor._eval_lock:  # no automatic start between our check and ours
        if monitor.busy:
            raise CommandError("busy", f"{inc.target} is already running a plan")
        d.journal.incidents.update(inc.id, "approved", f"approved by uid {peer.uid}")
        monitor.start(inc.id, plan)
    return {"id": inc.id, "started": plan.kind}


@command("deny", "refuse the plan of an incident waiting for approval")
async def _deny(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    inc = incident_arg(d, args)
    if inc.incident_class == LOCKDOWN and inc.state == "held":
        return deny_lockdown(d, inc, peer)
    if inc.state != "awaiting_approval":
        raise CommandError("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                           "approval")
    d.journal.incidents.update(inc.id, "denied", f"denied by uid {peer.uid}", state="denied",
                               closed_at=now_utc())
    return {"id": inc.id, "state": "denied"}

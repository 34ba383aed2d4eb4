"""A person's decision on a waiting incident: approve runs its plan (or resumes a held one),
deny refuses it (or abandons a held one). The target's incident desk does both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.commands.args import incident_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace
    from rollbackd.daemon.incidents.desk import IncidentDesk
    from rollbackd.daemon.journal import Incident


def _desk(d: DaemonFace, inc: Incident) -> IncidentDesk:
    m = d.monitors.get(inc.target)
    if m is None:
        raise CommandError("not_found", f"target {inc.target} is no longer configured")
    return m.desk


@command("approve", "run the plan of an incident waiting for approval, or resume a held one")
async def _approve(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    inc = incident_arg(d, args)
    plan = await _desk(d, inc).approve(inc.id, f"uid {peer.uid}", peer.uid)
    return {"id": inc.id, "started": plan.kind}


@command("deny", "refuse the plan of an incident waiting for approval, or abandon a held one "
         "(a person finishes it by hand)")
async def _deny(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    inc = incident_arg(d, args)
    state = _desk(d, inc).deny(inc.id, f"uid {peer.uid}")
    return {"id": inc.id, "state": state.value}

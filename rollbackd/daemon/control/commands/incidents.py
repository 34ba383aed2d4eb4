"""What the daemon sees: status (targets, incidents, breakers, overrides), incidents, show, ack."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.control.commands.args import incident_arg, int_arg
from rollbackd.daemon.control.commands.backups import failed_backups
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.journal import Incident
from rollbackd.daemon.report import build_report, render_markdown

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


def incident_row(i: Incident) -> dict[str, Any]:
    return {"id": i.id, "target": i.target, "class": i.incident_class, "state": i.state,
            "detected": i.detected_at, "reason": i.reason}


@command("status", "the daemon, its targets, open incidents, breakers and overrides")
async def _status(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    targets = []
    owners = d.cluster.owners() if d.cluster else {}  # several instances: who acts for what
    for name, m in d.monitors.items():
        inc = d.journal.incidents.open_for(name)
        targets.append({
            "target": name,
            "probes": {p: ("failing" if h.failing else "passing" if h.passing else "pending")
                       for p, h in m.health.items()},
            "version": m.version,
            "incident": inc.id if inc else None,
            "state": inc.state if inc else ("rolling back" if m.busy else "ok"),
            "attention": [f"{p}: {says}" for p, says in m.probe_account().items()] + [
                f"{k} backup failed: {f.reason}" for k, f in failed_backups(d, name, m).items()],
            **({"owner": owners.get(name, {}).get("owner")} if d.cluster else {}),
        })
    return {
        "pid": os.getpid(),
        "uptime": round(time.time() - d.started_at, 1),
        "summary": d.summary(),
        "self_degraded": d.selfcheck.degraded,
        **({"instance": d.cluster.instance} if d.cluster else {}),
        "targets": targets,
        "breakers": [{"target": t, "plan": k, "mode": b.mode} for t, k, b in d.journal.breakers.all()],
        "overrides": [{"kind": o.kind.value, "target": o.target or "*", "until": o.until,
                       "reason": o.reason, "by": o.by} for o in d.journal.overrides.active(now_utc())],
        "mail": d.journal.mail.counts(),
    }


@command("incidents", "recent incidents, newest first")
async def _incidents(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    limit = int_arg(args, "limit", 20, 1, 1000)
    return [incident_row(i) for i in d.journal.incidents.recent(limit)]


@command("show", "one incident with its steps and timeline (report=true: the Markdown report)")
async def _show(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    report = build_report(d.journal, incident_arg(d, args).id)
    if args.get("report"):
        return {"markdown": render_markdown(report)}
    return report


@command("ack", "acknowledge an incident: a person has it")
async def _ack(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    inc = incident_arg(d, args)
    d.journal.incidents.update(inc.id, "acked", "acknowledged", acked_at=now_utc())
    return {"id": inc.id, "acked": True}

"""Control commands by name, each with its help text; every call is written to the audit log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.control.protocol import CommandError
from daemon.journal.store import Incident, now_utc
from daemon.report import build_report, render_markdown

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.control.server import Peer


@dataclass(frozen=True)
class Command:
    func: Callable[[Daemon, dict[str, Any]], Awaitable[Any]]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str) -> Callable[[Any], Any]:
    def register(func: Callable[[Daemon, dict[str, Any]], Awaitable[Any]]) -> Any:
        COMMANDS[name] = Command(func, help)
        return func

    return register


def _incident_row(i: Incident) -> dict[str, Any]:
    return {"id": i.id, "target": i.target, "class": i.incident_class, "state": i.state,
            "detected": i.detected_at, "reason": i.reason}


def _incident_arg(d: Daemon, args: dict[str, Any]) -> Incident:
    try:
        incident_id = int(args["id"])
    except (KeyError, TypeError, ValueError):
        raise CommandError("bad_args", "an incident id (a number) is required") from None
    inc = d.journal.incident(incident_id)
    if inc is None:
        raise CommandError("not_found", f"no incident {incident_id}")
    return inc


@command("status", "the daemon, its targets, open incidents and breakers")
async def _status(d: Daemon, args: dict[str, Any]) -> Any:
    targets = []
    for name, m in d.monitors.items():
        inc = d.journal.open_incident_for(name)
        targets.append({
            "target": name,
            "probes": {p: ("failing" if h.failing else "passing" if h.passing else "pending")
                       for p, h in m.health.items()},
            "version": m._version[1],
            "incident": inc.id if inc else None,
            "state": inc.state if inc else ("rolling back" if m.busy else "ok"),
        })
    return {
        "pid": __import__("os").getpid(),
        "uptime": round(time.time() - d.started_at, 1),
        "summary": d.summary(),
        "targets": targets,
        "breakers": [{"target": t, "plan": k, "mode": b.mode} for t, k, b in d.journal.breakers()],
        "mail": d.journal.outbox_counts(),
    }


@command("incidents", "recent incidents, newest first")
async def _incidents(d: Daemon, args: dict[str, Any]) -> Any:
    limit = args.get("limit", 20)
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise CommandError("bad_args", "limit must be a number from 1 to 1000")
    return [_incident_row(i) for i in d.journal.incidents(limit)]


@command("show", "one incident with its steps and timeline (report=true: the Markdown report)")
async def _show(d: Daemon, args: dict[str, Any]) -> Any:
    report = build_report(d.journal, _incident_arg(d, args).id)
    if args.get("report"):
        return {"markdown": render_markdown(report)}
    return report


@command("ack", "acknowledge an incident: a person has it")
async def _ack(d: Daemon, args: dict[str, Any]) -> Any:
    inc = _incident_arg(d, args)
    d.journal.update_incident(inc.id, "acked", "acknowledged", acked_at=now_utc())
    return {"id": inc.id, "acked": True}


@command("reload", "re-read the config file; an invalid one is rejected and the old one kept")
async def _reload(d: Daemon, args: dict[str, Any]) -> Any:
    if not d.reload():
        raise CommandError("reload_failed", "config rejected; the previous one keeps running "
                           "(the daemon log names each error)")
    return {"targets": sorted(d.monitors)}


@command("help", "the commands this daemon knows")
async def _help(d: Daemon, args: dict[str, Any]) -> Any:
    return {name: c.help for name, c in sorted(COMMANDS.items())}


@command("freeze", "test hook: block the event loop for `seconds` (only with test_hooks)")
async def _freeze(d: Daemon, args: dict[str, Any]) -> Any:
    if not d.config.daemon.test_hooks:
        raise CommandError("forbidden", "freeze needs daemon.test_hooks = true")
    seconds = float(args.get("seconds", 1))
    time.sleep(min(seconds, 120))  # deliberately blocking: simulates a hung event loop
    return {"froze": seconds}


async def dispatch(d: Daemon, cmd: str, args: dict[str, Any], peer: Peer) -> Any:
    found = COMMANDS.get(cmd)
    if found is None:
        d.journal.audit(peer.uid, peer.pid, cmd, args, "unknown_command")
        raise CommandError("unknown_command", f"no such command {cmd!r}; try 'help'")
    try:
        result = await found.func(d, args)
    except CommandError as exc:
        d.journal.audit(peer.uid, peer.pid, cmd, args, f"error:{exc.code}")
        raise
    d.journal.audit(peer.uid, peer.pid, cmd, args, "ok")
    return result

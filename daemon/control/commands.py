"""Control commands by name, each with its help text; every call is written to the audit log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from daemon.control.protocol import CommandError
from daemon.control.server import Peer
from daemon.journal.store import Incident, now_utc
from daemon.report import build_report, render_markdown
from policies.breaker import Breaker
from policies.breaker import current as breaker_now
from policies.overrides import Override, OverrideKind
from probes.base import parse_duration

if TYPE_CHECKING:
    from daemon.app import Daemon


@dataclass(frozen=True)
class Command:
    func: Callable[[Daemon, dict[str, Any], Peer], Awaitable[Any]]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str) -> Callable[[Any], Any]:
    def register(func: Callable[[Daemon, dict[str, Any], Peer], Awaitable[Any]]) -> Any:
        COMMANDS[name] = Command(func, help)
        return func

    return register


def _incident_row(i: Incident) -> dict[str, Any]:
    return {"id": i.id, "target": i.target, "class": i.incident_class, "state": i.state,
            "detected": i.detected_at, "reason": i.reason}


def _incident_arg(d: Daemon, args: dict[str, Any]) -> Incident:
    incident_id = args.get("id")
    # bool is an int subclass and 1.5 would truncate: only a real integer names an incident.
    if isinstance(incident_id, str) and incident_id.isdigit():
        incident_id = int(incident_id)
    if not isinstance(incident_id, int) or isinstance(incident_id, bool) \
            or not 0 < incident_id < 2**63:
        raise CommandError("bad_args", "an incident id (a positive whole number) is required")
    inc = d.journal.incident(incident_id)
    if inc is None:
        raise CommandError("not_found", f"no incident {incident_id}")
    return inc


@command("status", "the daemon, its targets, open incidents and breakers")
async def _status(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
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
async def _incidents(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    limit = args.get("limit", 20)
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise CommandError("bad_args", "limit must be a number from 1 to 1000")
    return [_incident_row(i) for i in d.journal.incidents(limit)]


@command("show", "one incident with its steps and timeline (report=true: the Markdown report)")
async def _show(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    report = build_report(d.journal, _incident_arg(d, args).id)
    if args.get("report"):
        return {"markdown": render_markdown(report)}
    return report


@command("ack", "acknowledge an incident: a person has it")
async def _ack(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    inc = _incident_arg(d, args)
    d.journal.update_incident(inc.id, "acked", "acknowledged", acked_at=now_utc())
    return {"id": inc.id, "acked": True}


def _duration(args: dict[str, Any]) -> float:
    try:
        seconds = parse_duration(args.get("for", "1h"))
    except ValueError as exc:
        raise CommandError("bad_args", f"--for: {exc}") from None
    if not 0 < seconds <= 7 * 86400:
        raise CommandError("bad_args", "--for must be more than 0 and at most 7 days")
    return seconds


def _target_arg(d: Daemon, args: dict[str, Any], required: bool = False) -> str | None:
    target = args.get("target")
    if target is None and not required:
        return None
    if target not in d.monitors:
        raise CommandError("not_found", f"no target {target!r} (have: {', '.join(d.monitors)})")
    return str(target)


def _override(d: Daemon, kind: OverrideKind, args: dict[str, Any], peer: Peer) -> Any:
    reason = args.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise CommandError("bad_args", "--reason is required: say why, for the audit log")
    target = _target_arg(d, args)
    until = now_utc() + timedelta(seconds=_duration(args))
    d.journal.add_override(Override(kind, target, until, reason.strip(), f"uid {peer.uid}"))
    return {"kind": kind, "target": target or "*", "until": until, "reason": reason.strip()}


@command("pause", "observe only, act on nothing: target (or all), for DURATION, reason TEXT")
async def _pause(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    return _override(d, OverrideKind.PAUSE, args, peer)


@command("silence", "act as usual but send no mail: target (or all), for DURATION, reason TEXT")
async def _silence(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    return _override(d, OverrideKind.SILENCE, args, peer)


@command("resume", "end pause and silence overrides for a target (or the global ones)")
async def _resume(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    target = _target_arg(d, args)
    ended = sum(d.journal.end_overrides(k, target) for k in ("pause", "silence"))
    return {"target": target or "*", "ended": ended}


@command("approve", "run the plan of an incident waiting for approval, or resume a held one")
async def _approve(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    inc = _incident_arg(d, args)
    if inc.state not in ("awaiting_approval", "held"):
        raise CommandError("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                           "approval")
    monitor = d.monitors.get(inc.target)
    if monitor is None:
        raise CommandError("not_found", f"target {inc.target} is no longer configured")
    plan = monitor.stored_plan(inc)
    if plan is None:
        raise CommandError("no_plan", f"incident {inc.id} has no plan to run; act by hand")
    if monitor.busy:
        raise CommandError("busy", f"{inc.target} is already running a plan")
    d.journal.update_incident(inc.id, "approved", f"approved by uid {peer.uid}")
    monitor.start(inc.id, plan)
    return {"id": inc.id, "started": plan.kind}


@command("deny", "refuse the plan of an incident waiting for approval")
async def _deny(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    inc = _incident_arg(d, args)
    if inc.state != "awaiting_approval":
        raise CommandError("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                           "approval")
    d.journal.update_incident(inc.id, "denied", f"denied by uid {peer.uid}", state="denied",
                              closed_at=now_utc())
    return {"id": inc.id, "state": "denied"}


@command("breaker", "list circuit breakers, or reset one: action=reset target plan")
async def _breaker(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    if args.get("action", "list") == "list":
        rows = []
        for t, k, b in d.journal.breakers():
            reset = d.config.policy_for(t).breaker_reset if t in d.config.targets else 0.0
            now_b = breaker_now(b, now_utc(), reset)
            rows.append({"target": t, "plan": k, "mode": now_b.mode, "opened_at": b.opened_at,
                         "failures": len(b.failures)})
        return rows
    target = _target_arg(d, args, required=True)
    plan = args.get("plan", "deployment_rollback")
    d.journal.save_breaker(str(target), str(plan), Breaker())
    return {"target": target, "plan": plan, "mode": "closed"}


@command("reload", "re-read the config file; an invalid one is rejected and the old one kept")
async def _reload(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    if not d.reload():
        raise CommandError("reload_failed", "config rejected; the previous one keeps running "
                           "(the daemon log names each error)")
    return {"targets": sorted(d.monitors)}


@command("help", "the commands this daemon knows")
async def _help(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    return {name: c.help for name, c in sorted(COMMANDS.items())}


@command("freeze", "test hook: block the event loop for `seconds` (only with test_hooks)")
async def _freeze(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
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
        result = await found.func(d, args, peer)
    except CommandError as exc:
        d.journal.audit(peer.uid, peer.pid, cmd, args, f"error:{exc.code}")
        raise
    except Exception as exc:  # audited too: every command leaves a row, crashed or not
        d.journal.audit(peer.uid, peer.pid, cmd, args, f"error:internal:{type(exc).__name__}")
        raise
    d.journal.audit(peer.uid, peer.pid, cmd, args, "ok")
    return result

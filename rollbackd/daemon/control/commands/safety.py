"""The safety rails by hand: circuit breakers and the known-good ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.control.commands.args import ledger_version, monitor_arg, target_arg, text_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer
from rollbackd.policies.breaker import Breaker
from rollbackd.policies.breaker import current as breaker_now
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.plans import PlanKind

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


@command("breaker", "list circuit breakers, or reset one: action=reset target plan")
async def _breaker(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    action = args.get("action", "list")
    if action == "list":
        rows = []
        for t, k, b in d.journal.breakers.all():
            reset = d.config.policy_for(t).breaker_reset if t in d.config.targets else 0.0
            now_b = breaker_now(b, now_utc(), reset)
            rows.append({"target": t, "plan": k, "mode": now_b.mode, "opened_at": b.opened_at,
                         "failures": len(b.failures)})
        return rows
    if action != "reset":
        raise CommandError("bad_args", "action must be list or reset")
    target = target_arg(d, args, required=True)
    plan = args.get("plan", PlanKind.DEPLOYMENT_ROLLBACK.value)
    if plan not in PlanKind._value2member_map_:
        raise CommandError("bad_args", f"plan must be one of {', '.join(PlanKind)}")
    d.journal.breakers.save(str(target), str(plan), Breaker())
    return {"target": target, "plan": plan, "mode": "closed"}


def _entry_row(e: LedgerEntry, current: str | None) -> dict[str, Any]:
    state = "bad" if e.bad_at else "known-good" if e.known_good else "candidate"
    return {"version": e.version, "state": state, "current": e.version == current,
            "first_seen": e.first_seen, "known_good_at": e.known_good_at, "bad_at": e.bad_at,
            "bad_reason": e.bad_reason, "alembic_revision": e.alembic_revision}


@command("known-good", "the known-good ledger of a target, newest first")
async def _known_good(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    if args.get("action", "list") != "list":
        raise CommandError("bad_args", "known-good knows only list; see mark-bad and unmark")
    current = m.version
    entries = sorted(d.journal.ledger.entries(target), key=lambda e: e.first_seen, reverse=True)
    return [_entry_row(e, current) for e in entries]


@command("mark-bad", "mark a version bad: never a rollback target again (reason TEXT)")
async def _mark_bad(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    reason = text_arg(args, "reason", hint=": say why, for the ledger and the audit log")
    entry = ledger_version(d.journal.ledger.entries(target), args.get("version"))
    if entry.bad_at is not None:
        raise CommandError("bad_state", f"{entry.version[:12]} is already marked bad: "
                           f"{entry.bad_reason}")
    d.journal.ledger.mark_bad(target, entry.version, f"{reason} (marked by uid {peer.uid})")
    return {"target": target, "version": entry.version, "state": "bad"}


@command("unmark", "take the bad mark off a version (it is known-good again if it was before)")
async def _unmark(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    entry = ledger_version(d.journal.ledger.entries(target), args.get("version"))
    if entry.bad_at is None:
        raise CommandError("bad_state", f"{entry.version[:12]} is not marked bad")
    d.journal.ledger.unmark_bad(target, entry.version)
    state = "known-good" if entry.known_good_at else "candidate"
    return {"target": target, "version": entry.version, "state": state}

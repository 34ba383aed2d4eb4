"""The runbook's emergency access, done safely: unlock an admin, an emergency admin, lockdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from daemon.clock import now_utc
from daemon.control.commands.args import monitor_arg, text_arg
from daemon.control.commands.registry import command
from daemon.control.protocol import CommandError
from daemon.control.server import Peer
from daemon.journal import Incident
from daemon.report import write_report
from policies.lifecycle import State

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.control.accounts import Accounts

log = logging.getLogger("rollbackd.control")

LOCKDOWN = "lockdown"
"""The incident class of a lockdown request; it waits for `approve` in state held."""


def _accounts(d: Daemon, target: str) -> Accounts:
    # Imported on first use: SQLAlchemy and bcrypt are for the few targets with accounts.
    from daemon.control.accounts import Accounts

    return Accounts.of(target, d.config.targets[target])


@command("unlock-admin", "clear the lockout (locked_until, failed attempts) of an admin account")
async def _unlock_admin(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    email = text_arg(args, "email")
    assert email is not None
    result = await asyncio.to_thread(_accounts(d, target).unlock_admin, email)
    log.info("target=%s action=unlock-admin email=%s by_uid=%d status=done", target, email,
             peer.uid)
    return {"target": target, **result}


@command("emergency-admin", "create (or renew) the emergency admin with a one-time password, "
         "shown once in this reply, expiring after accounts.emergency_ttl")
async def _emergency_admin(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    accounts = _accounts(d, target)
    email, password, expires, created = await asyncio.to_thread(accounts.emergency_admin)
    # The password goes to the caller only: never to the log, the audit log or a mail.
    log.warning("target=%s action=emergency-admin email=%s by_uid=%d expires=%sZ status=%s",
                target, email, peer.uid, expires.isoformat(timespec="seconds"),
                "created" if created else "renewed")
    d.outbox.enqueue(None, f"emergency-admin-{target}-{time.time_ns()}",
                     f"[rollbackd] {target}: emergency admin {email} "
                     f"{'created' if created else 'renewed'}",
                     f"uid {peer.uid} (pid {peer.pid}) created an emergency admin account on "
                     f"{target}: {email}.\nIts one-time password was shown to that caller only; "
                     f"it stops working at {expires:%Y-%m-%d %H:%M:%S} UTC.\n"
                     "If this was not expected, treat it as an incident.\n",
                     recipients=d.outbox.recipients())
    return {"target": target, "email": email, "password": password,
            "expires_at": expires.isoformat(timespec="seconds") + "Z", "created": created}


@command("lockdown", "mass breach: lock every account but the emergency one, drop sessions and "
         "reset tokens, mail every contact; waits for `approve`")
async def _lockdown(d: Daemon, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    reason = text_arg(args, "reason", required=False) or "mass breach suspected"
    accounts = _accounts(d, target)
    pending = d.journal.incidents.open_of(target, LOCKDOWN)
    if pending:
        raise CommandError("bad_state", f"a lockdown of {target} is already waiting: incident "
                           f"{pending[0].id} (approve or deny it)")
    others = await asyncio.to_thread(accounts.count_others)
    spared = accounts.settings.emergency_email
    text = (f"lockdown requested by uid {peer.uid}: {reason}; would lock {others} accounts "
            f"(all but {spared}) and delete sessions and reset tokens")
    incident_id = d.journal.incidents.open(
        target, LOCKDOWN, text, None,
        {"requested_by": {"uid": peer.uid, "pid": peer.pid}, "reason": reason,
         "accounts": others, "spared": spared}, state=State.HELD.value, automatic=False)
    # Held, not awaiting_approval: that state closes by itself once the probes pass.
    d.journal.incidents.update(incident_id, "awaiting_approval",
                               f"rollbackctl approve {incident_id} runs it",
                               held_reason=f"lockdown waits for approval: rollbackctl approve "
                                           f"{incident_id} (or deny {incident_id})")
    log.warning("target=%s incident=%d action=lockdown status=awaiting-approval by_uid=%d",
                target, incident_id, peer.uid)
    d.outbox.enqueue(incident_id, "opened", f"[rollbackd] {target}: LOCKDOWN requested, "
                     "waiting for approval",
                     f"{text}.\n\nNothing has been changed yet. To run it:\n\n"
                     f"    rollbackctl approve {incident_id}\n\nTo refuse it:\n\n"
                     f"    rollbackctl deny {incident_id}\n", recipients=d.outbox.recipients())
    return {"id": incident_id, "target": target, "state": State.HELD.value,
            "accounts_to_lock": others, "spared": spared}


# -- running an approved lockdown -------------------------------------------------------------

async def _step(d: Daemon, inc: Incident, seq: int, name: str,
                action: Callable[[], Awaitable[str]]) -> str:
    step_id = d.journal.steps.started(inc.id, seq, name, idempotent=True)
    started = time.monotonic()
    try:
        detail = await action()
    except CommandError as exc:
        d.journal.steps.finished(step_id, False, time.monotonic() - started, str(exc))
        raise
    except Exception as exc:  # journaled as failed, answered as a refusal; the daemon goes on
        log.exception("target=%s incident=%d step=%s status=crashed", inc.target, inc.id, name)
        why = f"{name}: {type(exc).__name__}: {exc}"
        d.journal.steps.finished(step_id, False, time.monotonic() - started, why)
        raise CommandError("lockdown_failed", why) from None
    d.journal.steps.finished(step_id, True, time.monotonic() - started, detail)
    log.info("target=%s incident=%d step=%s status=done detail=%r", inc.target, inc.id, name,
             detail)
    return detail


def _redis_detail(counts: dict[str, int] | None, what: str) -> str:
    if counts is None:
        return f"no Redis configured: no {what} to delete there"
    return ", ".join(f"{n} {p}" for p, n in counts.items()) or f"no {what} patterns configured"


async def run_lockdown(d: Daemon, inc: Incident, peer: Peer) -> dict[str, Any]:
    """Lock, revoke, tell, verify; every step journaled. Safe to run again after a crash."""
    accounts = _accounts(d, inc.target)
    s = accounts.settings
    d.journal.incidents.update(inc.id, "approved", f"approved by uid {peer.uid}",
                               state=State.REMEDIATING.value, started_at=now_utc())
    done: dict[str, Any] = {}

    async def lock() -> str:
        done["locked"] = await asyncio.to_thread(accounts.lock_all_but_emergency)
        return f"{done['locked']} accounts locked; {s.emergency_email} spared"

    async def sessions() -> str:
        counts = await asyncio.to_thread(accounts.delete_redis_keys, s.session_keys)
        done["sessions"] = counts
        return _redis_detail(counts, "sessions")

    async def resets() -> str:
        counts = await asyncio.to_thread(accounts.delete_redis_keys, s.reset_keys)
        done["reset_tokens"] = counts
        return _redis_detail(counts, "reset tokens")

    async def notify() -> str:
        d.outbox.enqueue(inc.id, "lockdown", f"[rollbackd] {inc.target}: LOCKDOWN done",
                         f"Approved by uid {peer.uid}. {done['locked']} accounts of "
                         f"{inc.target} are locked (all but {s.emergency_email});\nsessions: "
                         f"{_redis_detail(done['sessions'], 'sessions')};\nreset tokens: "
                         f"{_redis_detail(done['reset_tokens'], 'reset tokens')}.\n"
                         "Accounts stay locked until a person unlocks them.\n",
                         recipients=d.outbox.recipients())  # a breach concerns every contact
        return f"{len(d.outbox.recipients())} recipients queued"

    async def verify() -> str:
        open_ = await asyncio.to_thread(accounts.still_open)
        if open_:
            raise CommandError("lockdown_failed", f"still able to log in: {', '.join(open_)}")
        return f"no account but {s.emergency_email} can log in"

    try:
        await _step(d, inc, 0, "lock_accounts", lock)
        await _step(d, inc, 1, "delete_sessions", sessions)
        await _step(d, inc, 2, "delete_reset_tokens", resets)
        await _step(d, inc, 3, "notify", notify)
        d.journal.incidents.update(inc.id, state=State.VERIFYING.value)
        await _step(d, inc, 4, "verify", verify)
    except CommandError as exc:
        d.journal.incidents.update(inc.id, "failed", str(exc), state=State.FAILED.value)
        d.journal.incidents.update(inc.id, "escalated", "a person must finish the lockdown",
                                   state=State.ESCALATED.value)
        write_report(d.journal, d.reports_dir, inc.id)
        d.outbox.enqueue(inc.id, "failed", f"[rollbackd] {inc.target}: LOCKDOWN FAILED",
                         f"The lockdown of {inc.target} failed: {exc}.\nA person must finish "
                         f"it; `rollbackctl show {inc.id}` has the steps.\n",
                         recipients=d.outbox.recipients())
        raise
    now = now_utc()
    d.journal.incidents.update(inc.id, "verified", "lockdown verified", state=State.RESOLVED.value,
                               rolled_back_at=now, verified_at=now, closed_at=now)
    write_report(d.journal, d.reports_dir, inc.id)
    log.warning("target=%s incident=%d action=lockdown status=done locked=%d", inc.target,
                inc.id, done["locked"])
    return {"id": inc.id, "target": inc.target, "state": State.RESOLVED.value, **done}


def deny_lockdown(d: Daemon, inc: Incident, peer: Peer) -> dict[str, Any]:
    # The lifecycle knows `denied` only after awaiting_approval; a held request closes as
    # escalated -> transient: nothing was done.
    d.journal.incidents.update(inc.id, "denied", f"denied by uid {peer.uid}: nothing changed",
                               state=State.ESCALATED.value)
    d.journal.incidents.update(inc.id, "closed", "lockdown not run", state=State.TRANSIENT.value,
                               closed_at=now_utc())
    return {"id": inc.id, "state": State.TRANSIENT.value, "denied": True}

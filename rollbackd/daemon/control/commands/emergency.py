"""The runbook's emergency access, done safely: unlock an admin, an emergency admin, lockdown."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.commands.args import monitor_arg, text_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.escalation import notices
from rollbackd.policies.lifecycle import State
from rollbackd.policies.plans import lockdown_plan

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace
    from rollbackd.daemon.rollback.accounts import Accounts

log = logging.getLogger("rollbackd.control")

def _accounts(d: DaemonFace, target: str) -> Accounts:
    # Imported on first use: SQLAlchemy and bcrypt are for the few targets with accounts.
    from rollbackd.daemon.rollback.accounts import Accounts

    return Accounts.of(target, d.config.targets[target])


@command("unlock-admin", "clear the lockout (locked_until, failed attempts) of an admin account")
async def _unlock_admin(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    email = text_arg(args, "email")
    assert email is not None
    result = await asyncio.to_thread(_accounts(d, target).unlock_admin, email)
    log.info("target=%s action=unlock-admin email=%s by_uid=%d status=done", target, email,
             peer.uid)
    return {"target": target, **result}


@command("emergency-admin", "create (or renew) the emergency admin with a one-time password, "
         "shown once in this reply, expiring after accounts.emergency_ttl")
async def _emergency_admin(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, _ = monitor_arg(d, args)
    accounts = _accounts(d, target)
    email, password, expires, created = await asyncio.to_thread(accounts.emergency_admin)
    # The password goes to the caller only: never to the log, the audit log or a mail.
    log.warning("target=%s action=emergency-admin email=%s by_uid=%d expires=%sZ status=%s",
                target, email, peer.uid, expires.isoformat(timespec="seconds"),
                "created" if created else "renewed")
    d.outbox.send(notices.emergency_admin(target, email, created, peer.uid, peer.pid, expires,
                                          time.time_ns()))
    return {"target": target, "email": email, "password": password,
            "expires_at": expires.isoformat(timespec="seconds") + "Z", "created": created}


@command("lockdown", "mass breach: lock every account but the emergency one, drop sessions and "
         "reset tokens, mail every contact; waits for `approve`")
async def _lockdown(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    reason = text_arg(args, "reason", required=False) or "mass breach suspected"
    accounts = _accounts(d, target)  # refuses a target without accounts, saying so
    plan = lockdown_plan(m.capabilities())
    assert plan is not None, "a target with accounts has the lockdown executor"
    others = await asyncio.to_thread(accounts.count_others)
    spared = accounts.settings.emergency_email
    text = (f"lockdown requested by uid {peer.uid}: {reason}; would lock {others} accounts "
            f"(all but {spared}) and delete sessions and reset tokens")
    incident_id = m.desk.request_lockdown(plan, text, {
        "requested_by": {"uid": peer.uid, "pid": peer.pid}, "reason": reason,
        "accounts": others, "spared": spared})
    log.warning("target=%s incident=%d action=lockdown status=awaiting-approval by_uid=%d",
                target, incident_id, peer.uid)
    return {"id": incident_id, "target": target, "state": State.AWAITING_APPROVAL.value,
            "accounts_to_lock": others, "spared": spared}

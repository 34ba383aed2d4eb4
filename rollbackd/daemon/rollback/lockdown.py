"""The runbook's mass-breach lockdown as executor steps: lock, revoke, check; run by the runner.

Every step is idempotent (locking a locked account or deleting deleted keys changes nothing),
so a lockdown interrupted by a crash can be run again after a person approves it once more.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, ClassVar

from rollbackd.daemon.config import TargetConfig
from rollbackd.daemon.rollback.accounts import Accounts
from rollbackd.daemon.rollback.base import CHECK_ONLY, Effect, StepContext, StepFailed, absent, done
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

STEPS: tuple[StepSpec, ...] = (
    StepSpec("lock_accounts", idempotent=True, timeout=120, destructive=True),
    StepSpec("delete_sessions", idempotent=True, timeout=60, destructive=True),
    StepSpec("delete_reset_tokens", idempotent=True, timeout=60, destructive=True),
    StepSpec("check_lockdown", idempotent=True, timeout=60),
)


def _redis_detail(counts: dict[str, int] | None, what: str) -> str:
    if counts is None:
        return f"no Redis configured: no {what} to delete there"
    return ", ".join(f"{n} {p}" for p, n in counts.items()) or f"no {what} patterns configured"


class LockdownExecutor:
    component: ClassVar[Component] = Component.ACCOUNTS
    backend: ClassVar[str] = "accounts"

    def __init__(self, target: str, config: TargetConfig) -> None:
        self.target = target
        self.config = config

    @property
    def accounts(self) -> Accounts:
        # Built on use: SQLAlchemy and bcrypt are for the few targets with accounts.
        return Accounts.of(self.target, self.config)

    def capabilities(self) -> Capabilities:
        return {Capability.ACCOUNTS_LOCKDOWN: STEPS}

    async def current_version(self) -> str | None:
        return None

    async def evidence(self) -> dict[str, Any]:
        others = await asyncio.to_thread(self.accounts.count_others)
        return {"accounts_to_lock": others, "spared": self.accounts.settings.emergency_email}

    async def backup_current(self, ctx: StepContext) -> str:
        return "accounts: the lock is undone by `unlock-admin`; nothing to back up"

    async def verify_target(self, ctx: StepContext) -> str:
        return "accounts: nothing to roll back to"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        accounts = self.accounts
        spared = accounts.settings.emergency_email
        if name == "lock_accounts":
            locked = await asyncio.to_thread(accounts.lock_all_but_emergency)
            return f"{locked} accounts locked; {spared} spared"
        if name == "delete_sessions":
            counts = await asyncio.to_thread(accounts.delete_redis_keys,
                                             accounts.settings.session_keys)
            return "sessions: " + _redis_detail(counts, "sessions")
        if name == "delete_reset_tokens":
            counts = await asyncio.to_thread(accounts.delete_redis_keys,
                                             accounts.settings.reset_keys)
            return "reset tokens: " + _redis_detail(counts, "reset tokens")
        if name == "check_lockdown":
            still = await asyncio.to_thread(accounts.still_open)
            if still:
                raise StepFailed(f"still able to log in: {', '.join(still)}")
            return f"no account but {spared} can log in"
        raise StepFailed(f"the accounts executor has no step {name!r}")

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        accounts = self.accounts
        if name == "lock_accounts":  # one UPDATE: all locked or none of ours
            still = await asyncio.to_thread(accounts.still_open)
            if not still:
                return done(f"every account but {accounts.settings.emergency_email} is locked")
            return absent(f"accounts can still log in: {', '.join(still)}")
        patterns = {"delete_sessions": accounts.settings.session_keys,
                    "delete_reset_tokens": accounts.settings.reset_keys}.get(name)
        if patterns is None:
            return CHECK_ONLY
        counts = await asyncio.to_thread(accounts.delete_redis_keys, list(patterns), False)
        what = name.removeprefix("delete_").replace("_", " ")
        if counts is None:
            return done(f"no Redis configured: no {what} to delete")
        left = {p: n for p, n in counts.items() if n}
        if not left:
            return done(f"no {what} keys are left ({', '.join(patterns) or 'no patterns'})")
        return absent(f"{what} keys still there: "
                      + ", ".join(f"{n} {p}" for p, n in left.items()))

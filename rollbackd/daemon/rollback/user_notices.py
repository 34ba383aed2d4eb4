"""The users' notice, the last step of the lockdown and of the key reset: the app tells its
users (an endpoint or a command, called once), or rollbackd mails each of them (user_mail.py).

The step is `notify_users`; what it says follows the plan: a password reset after the
lockdown, a data-loss notice after the key reset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx

from rollbackd.daemon.config import TargetConfig
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.rollback.accounts import Accounts
from rollbackd.daemon.rollback.base import Effect, StepContext, StepFailed, StepHeld, absent, done, unknown
from rollbackd.daemon.rollback.notice_settings import NoticeEvent, UserNoticeSettings
from rollbackd.daemon.rollback.receipts import call_recorded, command_effect, run_recorded
from rollbackd.daemon.rollback.user_mail import Mailing
from rollbackd.policies.plans import Capabilities, Capability, Component, PlanKind, StepSpec

STEP = "notify_users"
EVENTS: dict[PlanKind, NoticeEvent] = {PlanKind.LOCKDOWN: NoticeEvent.PASSWORD_RESET,
                                       PlanKind.KEY_RESET: NoticeEvent.DATA_LOSS}
CAPABILITIES = {NoticeEvent.PASSWORD_RESET: Capability.USERS_PASSWORD_RESET,
                NoticeEvent.DATA_LOSS: Capability.USERS_DATA_LOSS}
MARGIN = 30.0
"""Seconds the runner's timeout leaves past the step's own deadline, so that a mailing cut
off by user_notices.timeout holds with its counts instead of failing as a timeout."""


def idempotency_key(ctx: StepContext) -> str:
    """The same for every call of one incident's notice: an app that keeps it answers a
    repeat without telling its users twice."""
    return f"rollbackd-{ctx.target}-{ctx.incident_id}-{STEP}"


class UserNoticeExecutor:
    component: ClassVar[Component] = Component.USERS
    backend: ClassVar[str] = "users"

    def __init__(self, target: str, config: TargetConfig) -> None:
        assert config.user_notices is not None
        self.target = target
        self.config = config
        self.settings: UserNoticeSettings = config.user_notices
        self._journal: Journal | None = None
        self._outbox: Outbox | None = None
        self.hook: Callable[[str, str], None] | None = None
        self.owner: Callable[[], bool] = lambda: True

    def attach_journal(self, journal: Journal, outbox: Outbox,
                       hook: Callable[[str, str], None] | None = None,
                       owner: Callable[[], bool] | None = None) -> None:
        """The journal keeps one row per mailed user; the outbox's config gives the SMTP
        server (reloads included) and the host part of Message-IDs; `owner` says whether this
        instance still owns the target (several instances), asked before each user's mail."""
        self._journal, self._outbox, self.hook = journal, outbox, hook
        self.owner = owner or (lambda: True)

    def capabilities(self) -> Capabilities:
        # Mailing is journaled per user, so a resumed run mails only those left; a call of the
        # app's endpoint or command cut off by a crash is for a person to judge.
        step = StepSpec(STEP, idempotent=self.settings.via == "mail",
                        timeout=self.settings.timeout + MARGIN)
        return {CAPABILITIES[NoticeEvent(e)]: (step,) for e in self.settings.on}

    @property
    def accounts(self) -> Accounts:
        return Accounts.of(self.target, self.config)

    async def current_version(self) -> str | None:
        return None

    async def evidence(self) -> dict[str, Any]:
        s = self.settings
        found: dict[str, Any] = {"via": s.via}
        if s.via == "mail":
            found["users_to_tell"] = len(await asyncio.to_thread(self.accounts.notice_addresses))
            found["rate_per_second"] = s.rate
        elif s.via == "endpoint":
            found["url"] = s.url
        else:
            found["command"] = Path(s.command[0]).name if s.command else None
        return found

    async def backup_current(self, ctx: StepContext) -> str:
        return "users: telling them changes nothing to back up"

    async def verify_target(self, ctx: StepContext) -> str:
        if self.settings.via != "mail":
            return f"users: told by the app's {self.settings.via}"
        n = len(await asyncio.to_thread(self.accounts.notice_addresses))
        return f"users: {n:,} to mail at {self.settings.rate:g}/s"

    def _event(self, ctx: StepContext) -> NoticeEvent:
        event = EVENTS.get(ctx.plan.kind)
        if event is None:
            raise StepFailed(f"a {ctx.plan.kind} plan has no users' notice")
        return event

    async def run_step(self, name: str, ctx: StepContext) -> str:
        if name != STEP:
            raise StepFailed(f"the users executor has no step {name!r}")
        event = self._event(ctx)
        via = self.settings.via
        if via == "endpoint":
            return await call_recorded(ctx, STEP, "the app's endpoint",
                                       lambda: self._post(ctx, event))
        if via == "command":
            return await self._command(ctx, event)
        return await self._mail(ctx, event)

    # -- via the app -----------------------------------------------------------------------------

    async def _post(self, ctx: StepContext, event: NoticeEvent) -> str:
        s = self.settings
        assert s.url is not None
        headers = {"Idempotency-Key": idempotency_key(ctx)}
        if s.token_file is not None:
            headers["Authorization"] = f"Bearer {s.token_file.value.strip()}"
        body = {"event": event.value, "incident": ctx.incident_id, "target": ctx.target}
        try:
            async with httpx.AsyncClient(timeout=s.timeout, trust_env=False) as client:
                resp = await client.post(s.url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise StepHeld(f"the app's endpoint {s.url} did not answer ({type(exc).__name__}: "
                           f"{exc}); the users may or may not have been told: approving calls "
                           "it again with the same Idempotency-Key") from None
        said = " ".join(resp.text.split())[:200]
        if not resp.is_success:
            raise StepHeld(f"the app's endpoint {s.url} answered {resp.status_code}: {said}; "
                           "approving calls it again with the same Idempotency-Key")
        return f"{event.value} notice: the app's endpoint answered {resp.status_code}: {said}"

    async def _command(self, ctx: StepContext, event: NoticeEvent) -> str:
        s = self.settings
        assert s.command is not None
        env = {"ROLLBACKD_EVENT": event.value, "ROLLBACKD_INCIDENT": str(ctx.incident_id),
               "ROLLBACKD_TARGET": ctx.target, "ROLLBACKD_IDEMPOTENCY_KEY": idempotency_key(ctx)}
        res = await run_recorded(ctx, STEP, s.command, s.timeout, env=env)
        tail = " ".join(res.tail(2).split())[:200]
        return f"{event.value} notice: {Path(s.command[0]).name} exited 0" + \
            (f": {tail}" if tail else "")

    # -- rollbackd's own mail ----------------------------------------------------------------------

    def _wired(self) -> tuple[Journal, Outbox]:
        if self._journal is None or self._outbox is None:
            raise StepFailed("the users executor has no journal attached")
        return self._journal, self._outbox

    async def _mail(self, ctx: StepContext, event: NoticeEvent) -> str:
        journal, outbox = self._wired()
        deadline = time.monotonic() + self.settings.timeout
        rows = journal.user_notices
        if rows.counts(ctx.incident_id).total == 0:  # the first run fixes who is told
            addresses = await asyncio.to_thread(self.accounts.notice_addresses)
            rows.queue(ctx.incident_id, event.value, addresses)
        smtp = outbox.config.smtp
        mailing = Mailing(ctx.incident_id, self.target, event, self.settings, smtp,
                          self.settings.sender or smtp.sender, outbox.host, rows, self.hook,
                          self.owner)
        counts = await mailing.run(deadline)
        return f"user notices ({event.value}): {counts.describe()}"

    # -- after a crash -----------------------------------------------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name != STEP:
            return unknown(f"the users executor has no step {name!r}")
        if self.settings.via != "mail":
            return command_effect(ctx, STEP, since)
        journal, _ = self._wired()
        c = journal.user_notices.counts(ctx.incident_id)
        if c.total == 0:
            return absent("no user was mailed: the list of users was not made yet")
        if not c.queued:
            return done(f"every user's mail is settled: {c.describe()}")
        return unknown(f"{c.sent + c.failed:,} of {c.total:,} users' mails were settled before "
                       f"the stop ({c.describe()}); approving mails only the {c.queued:,} left, "
                       "each once (one being sent at the stop may get a second copy, with the "
                       "same Message-ID)")


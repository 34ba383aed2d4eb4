"""Redis sessions: flush the sessions (after a verified snapshot of the keys); restore lost
sessions and password-reset tokens from a snapshot with their remaining TTLs."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from redis.exceptions import RedisError, ResponseError

from rollbackd.daemon.backup.base import BackupFailed, BackupRefused
from rollbackd.daemon.backup.redis_keys import RedisKeysBackuper, client, matches, read_snapshot, scan_keys, why
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    StepContext,
    StepFailed,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.data_settings import RedisSessions
from rollbackd.daemon.rollback.effects import snapshot_effect
from rollbackd.daemon.rollback.store_wiring import StoreWiring
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

log = logging.getLogger("rollbackd.rollback.redis")

SESSIONS = Component.SESSIONS
BATCH = 500


class RedisSessionsExecutor(StoreWiring):
    component: ClassVar[Component] = SESSIONS
    backend: ClassVar[str] = "redis"

    def __init__(self, settings: RedisSessions) -> None:
        self.settings = settings
        self.backuper = RedisKeysBackuper(settings)
        self._store: BackupStore | None = None
        t = settings.command_timeout
        self.flush_steps: tuple[StepSpec, ...] = (
            StepSpec("snapshot_sessions", idempotent=True, timeout=4 * t, component=SESSIONS),
            StepSpec("flush_sessions", idempotent=True, timeout=4 * t, destructive=True,
                     component=SESSIONS),
            StepSpec("check_sessions", idempotent=True, timeout=2 * t, component=SESSIONS),
        )
        # Restoring only adds keys that are missing, so running it twice is harmless; it is
        # destructive all the same: keys deleted on purpose since the snapshot (logouts, used
        # reset tokens, a deliberate flush) come back, which is a person's call by default.
        self.restore_steps: tuple[StepSpec, ...] = (
            StepSpec("restore_sessions", idempotent=True, timeout=4 * t, destructive=True,
                     component=SESSIONS),
            StepSpec("check_sessions_restored", idempotent=True, timeout=4 * t,
                     component=SESSIONS),
        )

    def capabilities(self) -> Capabilities:
        caps: dict[Capability, tuple[StepSpec, ...]] = {
            Capability.SESSIONS_RESTORE: self.restore_steps}
        if self.settings.flush_after_restore:
            caps[Capability.SESSIONS_FLUSH] = self.flush_steps
        return caps

    async def current_version(self) -> str | None:
        return None

    async def _count(self, patterns: Sequence[str]) -> int:
        r = client(self.settings)
        try:
            return len(await scan_keys(r, patterns, self.settings.scan_count))
        finally:
            await r.aclose()

    async def evidence(self) -> dict[str, Any]:
        try:
            return {"sessions": await self._count(self.settings.session_keys),
                    "tokens": await self._count(self.settings.token_keys)}
        except RedisError as exc:
            return {"error": why(exc)}

    async def backup_current(self, ctx: StepContext) -> str:
        b = await self._snapshot(ctx)
        return f"sessions and tokens snapshotted as {b}"

    async def verify_target(self, ctx: StepContext) -> str:
        try:
            n = await self._count(self.settings.session_keys)
        except RedisError as exc:
            raise StepFailed(f"Redis is not reachable: {why(exc)}") from None
        found = f"Redis reachable; {n} session key(s)"
        if "restore_sessions" not in ctx.plan.step_names:
            return found
        try:
            b = await self.store.checked(ctx.backup_of(SESSIONS), "sessions")
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None
        return (f"{found}; snapshot {b.describe()} is verified and its checksum holds: "
                f"{b.versions.get('sessions')} session(s), {b.versions.get('tokens')} token(s)")

    async def run_step(self, name: str, ctx: StepContext) -> str:
        steps: dict[str, Callable[[StepContext], Any]] = {
            "snapshot_sessions": self._snapshot, "flush_sessions": self._flush,
            "check_sessions": self._check,
            "restore_sessions": self._restore_sessions,
            "check_sessions_restored": self._check_restored,
        }
        step = steps.get(name)
        if step is None:
            raise StepFailed(f"redis executor has no step {name!r}")
        try:
            result: str = await step(ctx)
        except RedisError as exc:
            raise StepFailed(f"{name}: {why(exc)}") from None
        return result

    # -- after a crash: did the step's effect happen? -----------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "snapshot_sessions":
            return snapshot_effect(self.store, ctx, "sessions")
        if name == "flush_sessions":
            left = await self._count(self.settings.session_keys)
            if left:
                return absent(f"{left} session key(s) are still there")
            return done("no session keys are left")
        if name == "restore_sessions":
            backup_id = ctx.backup_of(SESSIONS)
            live, _ = await self._live_entries(backup_id, self._all_patterns)
            missing = await self._missing(live)
            if not missing:
                return done(f"all {len(live)} unexpired key(s) of snapshot #{backup_id} are back")
            if missing == len(live):
                return absent(f"none of the {len(live)} key(s) of snapshot #{backup_id} is there")
            return unknown(f"{len(live) - missing} of {len(live)} key(s) of snapshot "
                           f"#{backup_id} are there, {missing} missing: restored in part")
        return CHECK_ONLY

    async def _missing(self, live: list[dict[str, Any]]) -> int:
        r = client(self.settings)
        try:
            missing = 0
            for i in range(0, len(live), BATCH):
                keys = [base64.b64decode(e["key"]) for e in live[i:i + BATCH]]
                pipe = r.pipeline(transaction=False)
                for k in keys:
                    pipe.exists(k)
                missing += sum(1 for found in await pipe.execute() if not found)
        finally:
            await r.aclose()
        return missing

    # -- flush ----------------------------------------------------------------------------

    async def _snapshot(self, ctx: StepContext) -> str:
        mine = [b for b in self.store.for_incident("sessions", ctx.incident_id) if b.verified]
        if mine:
            return f"verified key snapshot {mine[-1].describe()} was taken before any change"
        try:
            b = await self.store.take(self.backuper, f"incident-{ctx.incident_id}",
                                      ctx.incident_id)
        except BackupFailed as exc:
            raise StepFailed(f"cannot snapshot the keys: {exc}; not flushing") from None
        if not b.verified:
            raise StepFailed(f"key snapshot {b.describe()} did not verify: not flushing")
        return (f"verified key snapshot {b.describe()}: {b.versions.get('sessions')} "
                f"session(s), {b.versions.get('tokens')} token(s)")

    async def flush(self) -> tuple[int, int]:
        """Delete the sessions only; returns (sessions found, keys deleted)."""
        s = self.settings
        r = client(s)
        try:
            keys = await scan_keys(r, s.session_keys, s.scan_count)
            if s.flush == "database":
                others = 0
                async for k in r.scan_iter(count=s.scan_count):
                    if not matches(k, [*s.session_keys, *s.token_keys]):
                        others += 1
                        break
                if others:
                    raise StepFailed("the database holds keys that are neither sessions nor "
                                     "tokens: refusing FLUSHDB; nothing was deleted")
                size = int(await r.dbsize())
                await r.flushdb()
                return len(keys), size
            deleted = 0
            for i in range(0, len(keys), BATCH):
                deleted += int(await r.unlink(*keys[i:i + BATCH]))
            return len(keys), deleted
        finally:
            await r.aclose()

    async def _flush(self, ctx: StepContext) -> str:
        if not [b for b in self.store.for_incident("sessions", ctx.incident_id) if b.verified]:
            raise StepFailed("no verified key snapshot was taken for this incident: not "
                             "flushing")
        found, deleted = await self.flush()
        log.info("target=%s sessions=flushed found=%d deleted=%d mode=%s", ctx.target, found,
                 deleted, self.settings.flush)
        return f"{deleted} key(s) deleted of {found} session(s) found ({self.settings.flush})"

    async def _check(self, ctx: StepContext) -> str:
        left = await self._count(self.settings.session_keys)
        if left:
            raise StepFailed(f"{left} session key(s) remain after the flush")
        return "no session keys remain"

    # -- restore tokens ---------------------------------------------------------------------

    async def _live_entries(self, backup_id: int, patterns: Sequence[str]
                            ) -> tuple[list[dict[str, Any]], int]:
        """The snapshot's entries matching `patterns` that have not expired by now, and how
        many had."""
        try:
            b = await self.store.checked(backup_id, "sessions")
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None
        try:
            data = await asyncio.to_thread(read_snapshot, b.path)
        except (OSError, ValueError, KeyError) as exc:
            raise StepFailed(f"backup #{backup_id} cannot be read: {exc}") from None
        now_ms = int(time.time() * 1000)
        live, expired = [], 0
        for e in data["keys"]:
            if not matches(base64.b64decode(e["key"]), list(patterns)):
                continue
            at = e["expires_at_ms"]
            if at is not None and at <= now_ms + 1:
                expired += 1
                continue
            live.append(e)
        return live, expired

    async def restore(self, backup_id: int, patterns: Sequence[str] | None = None,
                      replace: bool = True) -> tuple[int, int, int]:
        """RESTORE the snapshot's keys matching `patterns` (default: the token patterns) with
        their remaining TTL (ABSTTL); expired ones are skipped. Without `replace`, a key that
        exists now is newer than the snapshot and is kept. Returns (restored, expired, kept)."""
        wanted = list(patterns if patterns is not None else self.settings.token_keys)
        live, expired = await self._live_entries(backup_id, wanted)
        restored = kept = 0
        r = client(self.settings)
        try:
            for i in range(0, len(live), BATCH):
                pipe = r.pipeline(transaction=False)
                for e in live[i:i + BATCH]:
                    at = e["expires_at_ms"]
                    pipe.restore(base64.b64decode(e["key"]), at or 0,
                                 base64.b64decode(e["value"]), replace=replace,
                                 absttl=at is not None)
                for res in await pipe.execute(raise_on_error=False):
                    if isinstance(res, ResponseError) and "BUSYKEY" in str(res):
                        kept += 1
                    elif isinstance(res, Exception):
                        raise res
                    else:
                        restored += 1
        finally:
            await r.aclose()
        return restored, expired, kept

    # -- restore lost sessions and tokens ----------------------------------------------------


    @property
    def _all_patterns(self) -> list[str]:
        return [*self.settings.session_keys, *self.settings.token_keys]

    async def _restore_sessions(self, ctx: StepContext) -> str:
        backup_id = ctx.backup_of(SESSIONS)
        restored, expired, kept = await self.restore(backup_id, self._all_patterns,
                                                     replace=False)
        log.info("target=%s sessions=restored backup=%d restored=%d expired=%d kept=%d",
                 ctx.target, backup_id, restored, expired, kept)
        return (f"{restored} session and token key(s) restored from snapshot #{backup_id} with "
                f"their remaining TTLs; {kept} existed already and were kept (newer); "
                f"{expired} had expired")

    async def _check_restored(self, ctx: StepContext) -> str:
        backup_id = ctx.backup_of(SESSIONS)
        live, _ = await self._live_entries(backup_id, self._all_patterns)
        missing = await self._missing(live)
        # _live_entries has left out what expired since the restore. A key deleted in between
        # (a user logging out this very second) fails the check: rare, and a person looks.
        if missing:
            raise StepFailed(f"{missing} of {len(live)} snapshot key(s) are still missing "
                             "after the restore")
        return f"all {len(live)} unexpired key(s) of snapshot #{backup_id} are in place"

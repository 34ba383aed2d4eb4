"""Redis sessions: flush the sessions (after a verified snapshot of the keys), and restore
password-reset tokens from a snapshot with their remaining TTLs."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from redis.exceptions import RedisError

from daemon.backup.base import BackupFailed, BackupRefused
from daemon.backup.redis_keys import RedisKeysBackuper, client, matches, read_snapshot, scan_keys, why
from daemon.backup.store import BackupStore
from daemon.rollback.base import StepContext, StepFailed
from daemon.rollback.data_settings import RedisSessions
from daemon.rollback.store_wiring import StoreWiring
from policies.plans import Capabilities, Capability, Component, StepSpec

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

    def capabilities(self) -> Capabilities:
        return {Capability.SESSIONS_FLUSH: self.flush_steps}

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
        return f"Redis reachable; {n} session key(s)"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        steps: dict[str, Callable[[StepContext], Any]] = {
            "snapshot_sessions": self._snapshot, "flush_sessions": self._flush,
            "check_sessions": self._check, "restore_tokens": self._restore_step,
        }
        step = steps.get(name)
        if step is None:
            raise StepFailed(f"redis executor has no step {name!r}")
        try:
            result: str = await step(ctx)
        except RedisError as exc:
            raise StepFailed(f"{name}: {why(exc)}") from None
        return result

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

    async def restore(self, backup_id: int, patterns: Sequence[str] | None = None
                      ) -> tuple[int, int]:
        """RESTORE the snapshot's keys matching `patterns` (default: the token patterns) with
        their remaining TTL (ABSTTL) and REPLACE; expired ones are skipped.
        Returns (restored, expired)."""
        try:
            b = await self.store.checked(backup_id, "sessions")
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None
        try:
            data = await asyncio.to_thread(read_snapshot, b.path)
        except (OSError, ValueError, KeyError) as exc:
            raise StepFailed(f"backup #{backup_id} cannot be read: {exc}") from None
        wanted = list(patterns if patterns is not None else self.settings.token_keys)
        now_ms = int(time.time() * 1000)
        restored = expired = 0
        r = client(self.settings)
        try:
            pipe = r.pipeline(transaction=False)
            for e in data["keys"]:
                key = base64.b64decode(e["key"])
                if not matches(key, wanted):
                    continue
                at = e["expires_at_ms"]
                if at is not None and at <= now_ms + 1:
                    expired += 1
                    continue
                pipe.restore(key, at or 0, base64.b64decode(e["value"]), replace=True,
                             absttl=at is not None)
                restored += 1
            await pipe.execute()
        finally:
            await r.aclose()
        return restored, expired

    async def _restore_step(self, ctx: StepContext) -> str:
        value = ctx.target_of(SESSIONS)
        if not value.isdigit():
            raise StepFailed(f"the plan's sessions target {value!r} is not a backup id")
        restored, expired = await self.restore(int(value))
        return f"{restored} token(s) restored from backup #{value}; {expired} had expired"

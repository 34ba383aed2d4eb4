"""Redis sessions against the real redis-server of the fixtures: flush of sessions only, after a
verified snapshot; password-reset tokens restored from the snapshot with their TTLs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.config import parse_config
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.data_settings import RedisSessions
from rollbackd.daemon.rollback.redis_sessions import RedisSessionsExecutor
from rollbackd.daemon.rollback.registry import build_executors
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component, PlanKind
from tests.recovery.support import ctx, plan_for


def settings(proc: RedisExecutor, tmp: Path, **kw: Any) -> RedisSessions:
    url = tmp / "redis-url"
    url.write_text(f"redis://{proc.host}:{proc.port}/0\n")
    return RedisSessions(url_file=str(url), **kw)  # type: ignore[arg-type]


def fill(r: redis.Redis) -> None:
    for i in range(120):
        r.set(f"session:{i}", f"user{i}", ex=3600)
    r.hset("session:h", mapping={"uid": "7"})
    r.set("password_reset:abc", "alice", px=600_000)
    r.set("password_reset:def", "bob")  # no expiry
    r.set("cache:page", "html")
    r.rpush("queue:mail", "a", "b")


def flush_plan(ex: RedisSessionsExecutor) -> Any:
    return plan_for(PlanKind.DATA_RECOVERY, IncidentClass.DATA_CORRUPTION,
                    Capability.SESSIONS_FLUSH, ex.flush_steps, {})


def test_flush_deletes_sessions_only_after_a_verified_snapshot(
        redis_proc: RedisExecutor, redisdb: redis.Redis, store: BackupStore,
        tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    c = ctx(flush_plan(ex), incident_id=5)
    assert [s.name for s in ex.flush_steps if s.destructive] == ["flush_sessions"]

    async def run() -> list[str]:
        return [await ex.run_step(s.name, c) for s in ex.flush_steps]

    details = asyncio.run(run())
    assert "121 session(s), 2 token(s)" in details[0]
    assert details[1].startswith("121 key(s) deleted of 121 session(s)")
    assert details[2] == "no session keys remain"
    assert redisdb.keys("session:*") == []
    assert redisdb.get("cache:page") == b"html"
    assert redisdb.lrange("queue:mail", 0, -1) == [b"a", b"b"]
    assert redisdb.get("password_reset:abc") == b"alice"
    snap = store.for_incident("sessions", 5)
    assert len(snap) == 1 and snap[0].verified and snap[0].versions["keys"] == 123


def test_flush_refuses_without_a_snapshot(redis_proc: RedisExecutor, redisdb: redis.Redis,
                                          store: BackupStore, tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    with pytest.raises(StepFailed, match="no verified key snapshot"):
        asyncio.run(ex.run_step("flush_sessions", ctx(flush_plan(ex))))
    assert len(redisdb.keys("session:*")) == 121


def test_flushdb_is_refused_when_other_keys_live_there(
        redis_proc: RedisExecutor, redisdb: redis.Redis, store: BackupStore,
        tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path, flush="database"))
    ex.attach(store)
    with pytest.raises(StepFailed, match="refusing FLUSHDB"):
        asyncio.run(ex.flush())
    assert redisdb.dbsize() == 125
    redisdb.delete("cache:page", "queue:mail")
    assert asyncio.run(ex.flush()) == (121, 123)
    assert redisdb.dbsize() == 0


def test_tokens_are_restored_with_their_ttls(redis_proc: RedisExecutor, redisdb: redis.Redis,
                                             store: BackupStore, tmp_path: Path) -> None:
    fill(redisdb)
    redisdb.set("password_reset:soon", "carol", px=300)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    assert b.verified and b.path.stat().st_mode & 0o777 == 0o600
    redisdb.delete("password_reset:abc", "password_reset:def")
    redisdb.set("password_reset:def", "mallory")
    asyncio.run(asyncio.sleep(0.4))  # password_reset:soon has expired meanwhile
    restored, expired, kept = asyncio.run(ex.restore(b.id))
    assert (restored, expired, kept) == (2, 1, 0)
    assert redisdb.get("password_reset:abc") == b"alice"
    assert 590_000 < redisdb.pttl("password_reset:abc") <= 600_000
    assert redisdb.get("password_reset:def") == b"bob"  # REPLACE
    assert redisdb.pttl("password_reset:def") == -1
    assert not redisdb.exists("password_reset:soon")
    assert redisdb.get("cache:page") == b"html"


def restore_plan(ex: RedisSessionsExecutor, backup_id: int) -> Any:
    return plan_for(PlanKind.DATA_RECOVERY, IncidentClass.DATA_CORRUPTION,
                    Capability.SESSIONS_RESTORE, ex.restore_steps,
                    {Component.SESSIONS: str(backup_id)})


def test_lost_sessions_come_back_and_newer_keys_are_kept(
        redis_proc: RedisExecutor, redisdb: redis.Redis, store: BackupStore,
        tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    redisdb.flushdb()  # the loss
    redisdb.set("session:7", "user7-after-login", ex=3600)  # logged in again since: newer
    redisdb.set("session:new", "user-new", ex=3600)
    c = ctx(restore_plan(ex, b.id), incident_id=9)
    assert [s.name for s in ex.restore_steps if s.destructive] == ["restore_sessions"]

    async def run() -> list[str]:
        checked = await ex.verify_target(c)
        return [checked] + [await ex.run_step(s.name, c) for s in ex.restore_steps]

    checked, restored, check = asyncio.run(run())
    assert f"snapshot #{b.id}" in checked and "121 session(s), 2 token(s)" in checked
    assert restored.startswith(f"122 session and token key(s) restored from snapshot #{b.id}")
    assert "1 existed already and were kept (newer)" in restored
    assert check == f"all 123 unexpired key(s) of snapshot #{b.id} are in place"
    assert redisdb.get("session:7") == b"user7-after-login"
    assert redisdb.get("session:new") == b"user-new"
    assert redisdb.get("session:3") == b"user3" and 3500_000 < redisdb.pttl("session:3") <= 3600_000
    assert redisdb.hgetall("session:h") == {b"uid": b"7"}
    assert redisdb.get("password_reset:abc") == b"alice"
    assert not redisdb.exists("cache:page")  # not the app's sessions or tokens: not ours


def test_a_session_missing_after_the_restore_fails_the_check(
        redis_proc: RedisExecutor, redisdb: redis.Redis, store: BackupStore,
        tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    c = ctx(restore_plan(ex, b.id), incident_id=9)
    redisdb.flushdb()
    asyncio.run(ex.run_step("restore_sessions", c))
    redisdb.delete("session:5")
    with pytest.raises(StepFailed, match="1 of 123 snapshot key"):
        asyncio.run(ex.run_step("check_sessions_restored", c))


def test_flush_is_offered_only_when_configured(redis_proc: RedisExecutor, tmp_path: Path) -> None:
    plain = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    assert set(plain.capabilities()) == {Capability.SESSIONS_RESTORE}
    flushing = RedisSessionsExecutor(settings(redis_proc, tmp_path, flush_after_restore=True))
    assert set(flushing.capabilities()) == {Capability.SESSIONS_RESTORE, Capability.SESSIONS_FLUSH}


def test_changed_snapshot_is_refused(redis_proc: RedisExecutor, redisdb: redis.Redis,
                                     store: BackupStore, tmp_path: Path) -> None:
    fill(redisdb)
    ex = RedisSessionsExecutor(settings(redis_proc, tmp_path))
    ex.attach(store)
    b = asyncio.run(store.take(ex.backuper))
    b.path.write_text(b.path.read_text() + " ")  # still valid JSON, different bytes
    with pytest.raises(StepFailed, match="checksum mismatch"):
        asyncio.run(ex.restore(b.id))


def test_config_section(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://:pw@127.0.0.1:1/2\n")
    probe = ('[targets.grading.probes.h]\nkind = "http_health"\n'
             'url = "http://127.0.0.1:1/health"\n')
    t = parse_config(probe + f'[targets.grading.redis]\nurl_file = "{tmp_path / "url"}"\n'
                     'session_keys = ["sess:*"]\n').targets["grading"]
    ex = build_executors(t)[Component.SESSIONS]
    assert isinstance(ex, RedisSessionsExecutor)
    assert set(ex.capabilities()) == {Capability.SESSIONS_RESTORE}
    assert "pw" not in repr(t.redis)

"""Redis sessions against the real redis-server of the fixtures: flush of sessions only, after a
verified snapshot; password-reset tokens restored from the snapshot with their TTLs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from daemon.backup.store import BackupStore
from daemon.config import parse_config
from daemon.rollback.base import StepFailed
from daemon.rollback.data_settings import RedisSessions
from daemon.rollback.redis_sessions import RedisSessionsExecutor
from daemon.rollback.registry import build_executors
from policies.classify import IncidentClass
from policies.plans import Capability, Component, PlanKind
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
    restored, expired = asyncio.run(ex.restore(b.id))
    assert (restored, expired) == (2, 1)
    assert redisdb.get("password_reset:abc") == b"alice"
    assert 590_000 < redisdb.pttl("password_reset:abc") <= 600_000
    assert redisdb.get("password_reset:def") == b"bob"  # REPLACE
    assert redisdb.pttl("password_reset:def") == -1
    assert not redisdb.exists("password_reset:soon")
    assert redisdb.get("cache:page") == b"html"


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
    assert set(ex.capabilities()) == {Capability.SESSIONS_FLUSH}
    assert "pw" not in repr(t.redis)

"""redis probe against a real redis-server: figures, sessions, outages, hangs, credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError
from pytest_redis.executor import RedisExecutor

from rollbackd.probes.observation import Observation, Status, Symptom
from rollbackd.probes.redis import RedisProbe, RedisSettings

PASSWORD = "probe-password-never-shown"


def probe_for(proc: RedisExecutor, **kw: Any) -> RedisProbe:
    kw.setdefault("timeout", 2.0)
    return RedisProbe("cache", RedisSettings(host=proc.host, port=proc.port, **kw))


async def check(probe: RedisProbe) -> Observation:
    obs = await probe.check()
    assert PASSWORD not in obs.detail + repr(obs)
    assert "\n" not in obs.detail and (obs.symptom is None) == obs.ok
    return obs


async def test_figures_of_a_healthy_server(redis_proc: RedisExecutor, redisdb: redis.Redis) -> None:
    redisdb.set("a", "1")
    redisdb.set("b", "x" * 10_000)
    obs = await check(probe_for(redis_proc))
    assert obs.status is Status.OK and (obs.probe, obs.kind) == ("cache", "redis")
    assert set(obs.metrics) == {"latency_seconds", "dbsize", "used_memory_bytes"}
    assert obs.metrics["dbsize"] == 2 and obs.metrics["used_memory_bytes"] > 10_000
    assert 0 < obs.metrics["latency_seconds"] < 1
    assert obs.detail.startswith(f"redis 127.0.0.1:{redis_proc.port} db 0: PONG in ")
    assert ", 2 keys, " in obs.detail and obs.detail.endswith(" MiB used.")


async def test_maxmemory_is_reported_when_set(redis_proc: RedisExecutor,
                                              redisdb: redis.Redis) -> None:
    redisdb.config_set("maxmemory", str(64 << 20))
    try:
        obs = await check(probe_for(redis_proc))
    finally:
        redisdb.config_set("maxmemory", "0")
    assert obs.metrics["maxmemory_bytes"] == 64 << 20 and "MiB used of 64.0 MiB" in obs.detail


async def test_sessions_lost_then_back(redis_proc: RedisExecutor, redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc, session_pattern="session:*", min_sessions=1)
    redisdb.set("reset-token:1", "t")
    obs = await check(probe)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.ROWS_COLLAPSED)
    assert obs.detail.endswith(", but only 0 keys match 'session:*', fewer than min_sessions 1: "
                               "sessions were lost.")
    assert obs.metrics["sessions"] == 0 and obs.metrics["sessions_scan_complete"] == 1
    redisdb.set("session:abc", "user 1")
    redisdb.set("session:def", "user 2")
    obs = await check(probe)
    assert obs.ok and obs.metrics["sessions"] >= 1, obs.detail
    assert obs.metrics["dbsize"] == 3


async def test_a_collapse_of_the_session_count_fails(redis_proc: RedisExecutor,
                                                     redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc, session_pattern="session:*", sessions_max_drop=0.5,
                      sessions_baseline_min=10)
    redisdb.mset({f"session:{i}": "u" for i in range(40)})
    assert (await check(probe)).ok
    redisdb.delete(*[f"session:{i}" for i in range(15)])  # 37% fewer: logouts, expiry
    obs = await check(probe)
    assert obs.ok, obs.detail
    redisdb.delete(*[f"session:{i}" for i in range(15, 30)])  # 25 -> 10: 60% drop
    obs = await check(probe)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.ROWS_COLLAPSED)
    assert "session keys fell from 25 to 10 (60% drop, limit 50%): sessions were lost." in \
        obs.detail
    obs = await check(probe)  # the baseline is the last passing check, not the failing one
    assert obs.symptom is Symptom.ROWS_COLLAPSED


async def test_a_small_session_count_is_not_judged(redis_proc: RedisExecutor,
                                                  redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc, session_pattern="session:*", sessions_max_drop=0.5)
    redisdb.mset({f"session:{i}": "u" for i in range(9)})
    assert (await check(probe)).ok
    redisdb.flushdb()
    obs = await check(probe)
    assert obs.ok, obs.detail  # 9 sessions, below sessions_baseline_min 10: expiry, not loss


async def test_sessions_are_counted_without_a_minimum(redis_proc: RedisExecutor,
                                                      redisdb: redis.Redis) -> None:
    redisdb.mset({f"session:{i}": "u" for i in range(25)} | {"other": "x"})
    obs = await check(probe_for(redis_proc, session_pattern="session:*", scan_count=10))
    assert obs.ok and obs.metrics["sessions"] == 25 and obs.metrics["sessions_scan_complete"] == 1
    assert obs.detail.endswith(", 25 keys match 'session:*'.")


async def test_scan_is_bounded_in_a_big_keyspace(redis_proc: RedisExecutor,
                                                 redisdb: redis.Redis) -> None:
    redisdb.mset({f"cache:{i}": "v" for i in range(3000)})
    probe = probe_for(redis_proc, session_pattern="session:*", min_sessions=1, scan_count=50,
                      scan_max_keys=200)
    obs = await check(probe)
    # Too few sessions in the part scanned: not proof they are gone, so no alarm, but said so.
    assert obs.ok and obs.metrics["sessions_scan_complete"] == 0, obs.detail
    assert "0+ keys match 'session:*' in the first 200 keys scanned (not conclusive)" in obs.detail


async def test_server_stopped_mid_test_then_started(redis_proc: RedisExecutor,
                                                    redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc)
    assert (await check(probe)).ok
    with redis_proc.stopped():
        obs = await check(probe)
        assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE)
        assert obs.detail.startswith(f"cannot connect to redis 127.0.0.1:{redis_proc.port} db 0")
        assert obs.duration < 1.5  # refused at once: no retries, no backoff
    obs = await check(probe)
    assert obs.ok, obs.detail


async def test_paused_server_times_out_within_the_timeout(redis_proc: RedisExecutor,
                                                          redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc, timeout=0.3)
    redisdb.client_pause(1500, all=True)  # the server answers no command for 1.5 s
    try:
        obs = await check(probe)
        assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.TIMEOUT), obs.detail
        assert obs.detail == f"redis 127.0.0.1:{redis_proc.port} db 0 gave no answer within 0.3s."
        assert obs.duration < 1.0
    finally:
        redisdb.client_unpause()
    assert (await check(probe)).ok


async def test_no_connection_is_left_behind(redis_proc: RedisExecutor,
                                            redisdb: redis.Redis) -> None:
    probe = probe_for(redis_proc, session_pattern="session:*")
    for _ in range(5):
        assert (await check(probe)).ok
    redisdb.client_pause(1000, all=True)
    try:
        await check(probe_for(redis_proc, timeout=0.2))
    finally:
        redisdb.client_unpause()
    await asyncio.sleep(0.1)
    names = [c.get("name") for c in redisdb.client_list()]
    assert "rollbackd-probe" not in names


@pytest.fixture
def acl_user(redisdb: redis.Redis, tmp_path: Path) -> Any:
    redisdb.acl_setuser("prober", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                        commands=["+@all"])
    good = tmp_path / "redis-password"
    good.write_text(PASSWORD + "\n")
    yield good
    redisdb.acl_deluser("prober")


async def test_acl_user_with_password_file(redis_proc: RedisExecutor, acl_user: Path,
                                           tmp_path: Path) -> None:
    assert (await check(probe_for(redis_proc, username="prober", password_file=acl_user))).ok
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + PASSWORD)
    obs = await check(probe_for(redis_proc, username="prober", password_file=wrong))
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "refused the probe's credentials" in obs.detail


async def test_unreadable_password_file(redis_proc: RedisExecutor, tmp_path: Path) -> None:
    obs = await check(probe_for(redis_proc, password_file=tmp_path / "absent"))
    assert obs.status is Status.ERROR and "cannot read the password file" in obs.detail


def test_min_sessions_needs_a_pattern() -> None:
    with pytest.raises(ValidationError, match="min_sessions needs session_pattern"):
        RedisSettings(min_sessions=1)
    with pytest.raises(ValidationError, match="sessions_max_drop needs session_pattern"):
        RedisSettings(sessions_max_drop=0.5)
    with pytest.raises(ValidationError, match="absolute path"):
        RedisSettings(password_file=Path("pw"))


def test_registered_with_every_setting_documented() -> None:
    from rollbackd.probes.registry import PROBE_KINDS, build_probe, probe_class
    from tests.probes.test_registry import _documented_fields

    model, cls = PROBE_KINDS["redis"].settings, probe_class("redis")
    assert (model, cls) == (RedisSettings, RedisProbe)
    fields = _documented_fields(model)
    assert [name for name, doc in fields.items() if not doc and name != "kind"] == []
    assert isinstance(build_probe("cache", model(kind="redis")), RedisProbe)

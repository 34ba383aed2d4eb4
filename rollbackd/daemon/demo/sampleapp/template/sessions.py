"""Bearer-token session stores for the grading app: in-process, or Redis when REDIS_URL is set."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Protocol


class Sessions(Protocol):
    def create(self, user_id: int) -> str: ...
    def lookup(self, token: str) -> int | None: ...


class MemorySessions:
    """Per-process sessions; they vanish on restart, which is fine for a single instance."""

    def __init__(self, ttl: int) -> None:
        self._ttl, self._lock = ttl, threading.Lock()
        self._data: dict[str, tuple[int, float]] = {}

    def create(self, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._data[token] = (user_id, time.monotonic() + self._ttl)
        return token

    def lookup(self, token: str) -> int | None:
        with self._lock:
            entry = self._data.get(token)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._data[token]
                return None
            return entry[0]


class RedisSessions:
    """Sessions shared by every instance and surviving restarts, stored as `session:<token>`."""

    def __init__(self, url: str, ttl: int) -> None:
        import redis  # imported lazily: only deployments with REDIS_URL need a reachable Redis

        self._ttl, self._redis = ttl, redis.Redis.from_url(url, decode_responses=True)

    def create(self, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        # The TTL lives in Redis itself so abandoned sessions expire without a sweeper.
        self._redis.set(f"session:{token}", str(user_id), ex=self._ttl)
        return token

    def lookup(self, token: str) -> int | None:
        value = self._redis.get(f"session:{token}")
        return int(value) if value else None


def make_sessions(redis_url: str | None, ttl: int) -> Sessions:
    return RedisSessions(redis_url, ttl) if redis_url else MemorySessions(ttl)

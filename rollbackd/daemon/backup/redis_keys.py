"""Redis backups: the configured key patterns (sessions, reset tokens) by SCAN + DUMP, each with
its PTTL, into one JSON file; restored with RESTORE ... ABSTTL REPLACE."""

from __future__ import annotations

import base64
import fnmatch
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rollbackd.daemon.backup.base import BackupFailed, BackupKind, BackupResult
from rollbackd.daemon.rollback.data_settings import RedisSessions

FORMAT = 1


def client(settings: RedisSessions) -> aioredis.Redis:
    """A client from the secret URL; no retries, bounded by the command timeout."""
    t = settings.command_timeout
    return aioredis.Redis.from_url(settings.url_file.value, socket_timeout=t,
                                   socket_connect_timeout=min(t, 10.0))


def why(exc: RedisError) -> str:
    """A Redis error on one line, never the URL (the password lives there)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


async def scan_keys(r: aioredis.Redis, patterns: Sequence[str], count: int) -> list[bytes]:
    found: set[bytes] = set()
    for pattern in patterns:
        async for key in r.scan_iter(match=pattern, count=count):
            found.add(key if isinstance(key, bytes) else str(key).encode())
    return sorted(found)


async def dump_keys(r: aioredis.Redis, keys: Sequence[bytes], batch: int = 500
                    ) -> list[dict[str, Any]]:
    """DUMP and PTTL of each key, pipelined; a key gone meanwhile is left out."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(keys), batch):
        chunk = keys[i:i + batch]
        pipe = r.pipeline(transaction=False)
        for k in chunk:
            pipe.dump(k)
            pipe.pttl(k)
        replies = await pipe.execute()
        now_ms = int(time.time() * 1000)
        for k, payload, pttl in zip(chunk, replies[0::2], replies[1::2], strict=True):
            if payload is None or pttl == -2:
                continue
            out.append({"key": base64.b64encode(k).decode(),
                        "value": base64.b64encode(payload).decode(),
                        "expires_at_ms": None if pttl < 0 else now_ms + int(pttl)})
    return out


def matches(key: bytes, patterns: Sequence[str]) -> bool:
    text = key.decode("utf-8", "surrogateescape")
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


def read_snapshot(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a rollbackd Redis key snapshot")
    keys = data.get("keys")
    if not isinstance(keys, list) or len(keys) != data.get("count"):
        raise ValueError("the key list does not match its count")
    for e in keys:
        base64.b64decode(e["key"], validate=True)
        base64.b64decode(e["value"], validate=True)
    return data


class RedisKeysBackuper:
    kind: BackupKind = "sessions"
    suffix = ".redis.json"

    def __init__(self, settings: RedisSessions) -> None:
        self.settings = settings
        self.patterns = [*settings.session_keys, *settings.token_keys]

    async def backup(self, dest: Path) -> BackupResult:
        s = self.settings
        r = client(s)
        try:
            keys = await scan_keys(r, self.patterns, s.scan_count)
            entries = await dump_keys(r, keys)
        except RedisError as exc:
            raise BackupFailed(f"Redis key backup failed: {why(exc)}") from None
        finally:
            await r.aclose()
        sessions = sum(1 for e in entries
                       if matches(base64.b64decode(e["key"]), s.session_keys))
        doc = {"format": FORMAT, "taken_at_ms": int(time.time() * 1000),
               "patterns": self.patterns, "count": len(entries), "keys": entries}
        dest.write_text(json.dumps(doc), encoding="utf-8")
        return BackupResult({"keys": len(entries), "sessions": sessions,
                             "tokens": len(entries) - sessions})

    async def verify(self, path: Path) -> str | None:
        try:
            read_snapshot(path)
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable key snapshot: {str(exc)[:200]}"
        return None

"""redis: PING round trip, DBSIZE, used memory, and whether the app's session keys are there."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from rollbackd.probes.base import AbsolutePath, BaseProbe, Fraction, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

if TYPE_CHECKING:  # the client library is imported by the probe's first run, not with settings
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

# Replies that mean the probe's credentials are wrong, not that Redis is broken.
_AUTH_WORDS = ("NOAUTH", "WRONGPASS", "NOPERM", "invalid password", "invalid username")


class RedisSettings(ProbeSettings):
    kind: Literal["redis"] = "redis"
    host: str = Field(default="127.0.0.1", min_length=1)
    """Host name or address of the Redis server."""
    port: int = Field(default=6379, ge=1, le=65535)
    """TCP port of the Redis server."""
    unix_socket: AbsolutePath | None = None
    """Absolute path of the server's Unix socket; when set, host and port are not used."""
    db: int = Field(default=0, ge=0)
    """Database number the app keeps its keys in (DBSIZE and the session scan look there)."""
    username: str | None = None
    """ACL user name (Redis 6+); without it a password authenticates the default user."""
    password_file: AbsolutePath | None = None
    """Absolute path of a file holding the password; read at each check, never logged."""
    session_pattern: str | None = None
    """SCAN MATCH pattern of the app's session keys, e.g. "session:*"; unset: not looked for."""
    min_sessions: int = Field(default=0, ge=0)
    """Fewer session keys than this fails the probe (rows_collapsed): sessions were lost."""
    sessions_max_drop: Fraction | None = None
    """The largest fraction (0..1) the session count may drop by since the last passing check;
    a larger drop fails the probe (rows_collapsed): sessions were lost, e.g. by a FLUSHALL."""
    sessions_baseline_min: int = Field(default=10, ge=1)
    """A drop is judged only from at least this many sessions: a handful expiring together
    is not a loss."""
    scan_count: int = Field(default=100, ge=1, le=10_000)
    """COUNT of each SCAN call: small, so that no call holds the single-threaded server long."""
    scan_max_keys: int = Field(default=10_000, ge=1)
    """Keys examined at most per check. A scan cut short that found too few sessions is not
    proof that they are gone: it passes, and the detail says the count is a lower bound."""

    @model_validator(mode="after")
    def _pattern_for_min(self) -> RedisSettings:
        for key, value in (("min_sessions", self.min_sessions),
                           ("sessions_max_drop", self.sessions_max_drop)):
            if value and not self.session_pattern:
                raise ValueError(f"{key} needs session_pattern (e.g. \"session:*\")")
        return self


def read_password(path: Path) -> str:
    """The password in `path`; one trailing newline is dropped."""
    return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")


@dataclass
class _Figures:
    ping: float
    keys: int
    memory: int
    maxmemory: int
    sessions: int | None = None
    complete: bool = True
    """Whether the session scan went through the whole keyspace."""


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class RedisProbe(BaseProbe[RedisSettings]):
    kind: ClassVar[str] = "redis"

    def __init__(self, name: str, settings: RedisSettings) -> None:
        super().__init__(name, settings)
        self._good_sessions: int | None = None
        """Session count of the last passing, complete scan: what a drop is measured against."""

    @property
    def where(self) -> str:
        s = self.settings
        return f"{s.unix_socket if s.unix_socket else f'{s.host}:{s.port}'} db {s.db}"

    async def run(self, started: float) -> Observation:
        path = self.settings.password_file
        password = None
        if path is not None:
            try:
                password = read_password(path)  # a small file: cheaper than a thread hop
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                return self.error(f"cannot read the password file {str(path)!r}: {why}.",
                                  started)
        return self.redacted(await self._guarded(password, started), password)

    def _client(self, password: str | None) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        s = self.settings
        return aioredis.Redis(
            host=s.host, port=s.port, unix_socket_path=str(s.unix_socket) if s.unix_socket else None,
            db=s.db, username=s.username, password=password, socket_timeout=s.timeout,
            socket_connect_timeout=s.timeout, retry=Retry(NoBackoff(), 0),  # fail now, not later
            single_connection_client=True, client_name="rollbackd-probe")

    async def _guarded(self, password: str | None, started: float) -> Observation:
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        s = self.settings
        try:
            client = self._client(password)
            try:
                async with asyncio.timeout(s.timeout):
                    figures = await self._measure(client)
            finally:
                await client.aclose()
        except (TimeoutError, RedisTimeoutError):
            return self.fail(f"redis {self.where} gave no answer within {s.timeout:g}s.",
                             started, Symptom.TIMEOUT)
        except RedisError as exc:
            return self._failure(exc, started)
        except Exception as exc:  # a probe never raises; the password is redacted by run()
            return self.crashed(exc, started)
        return self._judge(figures, started)

    def _failure(self, exc: RedisError, started: float) -> Observation:
        from redis.exceptions import (
            AuthenticationError,
            AuthenticationWrongNumberOfArgsError,
            BusyLoadingError,
            NoPermissionError,
            ResponseError,
        )
        from redis.exceptions import ConnectionError as RedisConnectionError

        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError |
                      NoPermissionError) or any(w in text for w in _AUTH_WORDS):
            return self.error(f"redis {self.where} refused the probe's credentials: {text}.",
                              started)
        if isinstance(exc, BusyLoadingError):
            return self.fail(f"redis {self.where} is up but still loading its dataset.", started,
                             Symptom.DEPENDENCY_DOWN)
        if isinstance(exc, RedisConnectionError):
            return self.fail(f"cannot connect to redis {self.where}: {text}.", started,
                             Symptom.UNREACHABLE)
        if isinstance(exc, ResponseError):
            return self.fail(f"redis {self.where} answered with an error: {text}.", started,
                             Symptom.BAD_RESPONSE)
        return self.error(f"probe error on redis {self.where}: {type(exc).__name__}: {text}.",
                          started)

    async def _measure(self, client: aioredis.Redis) -> _Figures:
        sent = time.monotonic()
        await client.ping()
        ping = time.monotonic() - sent
        keys = int(await client.dbsize())
        memory = await client.info("memory")
        figures = _Figures(ping, keys, int(memory.get("used_memory", 0)),
                           int(memory.get("maxmemory", 0)))
        if self.settings.session_pattern:
            figures.sessions, figures.complete = await self._sessions(client)
        return figures

    async def _sessions(self, client: aioredis.Redis) -> tuple[int, bool]:
        """(session keys found, whether the scan covered every key); stops once enough are seen."""
        s = self.settings
        cursor, found, examined = 0, 0, 0
        while True:
            cursor, keys = await client.scan(cursor, match=s.session_pattern, count=s.scan_count)
            found += len(keys)
            examined += s.scan_count
            if int(cursor) == 0:
                return found, True
            if (s.min_sessions and found >= s.min_sessions) or examined >= s.scan_max_keys:
                return found, False

    def _judge(self, f: _Figures, started: float) -> Observation:
        s = self.settings
        metrics = {"latency_seconds": f.ping, "dbsize": float(f.keys),
                   "used_memory_bytes": float(f.memory)}
        if f.maxmemory:
            metrics["maxmemory_bytes"] = float(f.maxmemory)
        said = (f"redis {self.where}: PONG in {f.ping * 1000:.1f} ms, {f.keys} keys, "
                f"{_mib(f.memory)} used" + (f" of {_mib(f.maxmemory)}" if f.maxmemory else ""))
        if f.sessions is None:
            return self.ok(f"{said}.", started, None, metrics)
        metrics["sessions"] = float(f.sessions)
        metrics["sessions_scan_complete"] = 1.0 if f.complete else 0.0
        found = f"{f.sessions}{'' if f.complete else '+'} keys match {s.session_pattern!r}"
        if f.sessions < s.min_sessions:
            if f.complete:
                return self.fail(f"{said}, but only {found}, fewer than min_sessions "
                                 f"{s.min_sessions}: sessions were lost.", started,
                                 Symptom.ROWS_COLLAPSED, None, metrics)
            found += f" in the first {s.scan_max_keys} keys scanned (not conclusive)"
        before = self._good_sessions
        if f.complete and s.sessions_max_drop is not None and before is not None \
                and before >= s.sessions_baseline_min \
                and f.sessions < before * (1 - s.sessions_max_drop):
            drop = 1 - f.sessions / before
            return self.fail(f"{said}, but session keys fell from {before} to {f.sessions} "
                             f"({drop:.0%} drop, limit {s.sessions_max_drop:.0%}): sessions were "
                             "lost.", started, Symptom.ROWS_COLLAPSED, None, metrics)
        if f.complete:
            self._good_sessions = f.sessions
        return self.ok(f"{said}, {found}.", started, None, metrics)

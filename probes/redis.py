"""redis: PING round trip, DBSIZE, used memory, and whether the app's session keys are there."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import redis.asyncio as aioredis
from pydantic import Field, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from probes.base import Fraction, ProbeSettings
from probes.http_health import AbsolutePath
from probes.observation import Observation, Status, Symptom

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
    """The password in `path`; blocking, so called in a thread. One trailing newline is dropped."""
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


class RedisProbe:
    kind: ClassVar[str] = "redis"

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self._good_sessions: int | None = None
        """Session count of the last passing, complete scan: what a drop is measured against."""

    @property
    def where(self) -> str:
        s = self.settings
        return f"{s.unix_socket if s.unix_socket else f'{s.host}:{s.port}'} db {s.db}"

    def _obs(self, status: Status, detail: str, started: float, symptom: Symptom | None = None,
             metrics: dict[str, float] | None = None) -> Observation:
        return Observation(probe=self.name, kind=self.kind, status=status, detail=detail,
                           duration=time.monotonic() - started, symptom=symptom,
                           metrics=metrics or {})

    async def check(self) -> Observation:
        started = time.monotonic()
        path = self.settings.password_file
        password = None
        if path is not None:
            try:
                password = await asyncio.to_thread(read_password, path)
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                return self._obs(Status.ERROR, f"cannot read the password file {str(path)!r}: "
                                 f"{why}.", started, Symptom.PROBE_ERROR)
        obs = await self._guarded(password, started)
        if password and password in obs.detail:  # no library message may carry it out
            return self._obs(obs.status, obs.detail.replace(password, "<password>"), started,
                             obs.symptom, dict(obs.metrics))
        return obs

    def _client(self, password: str | None) -> aioredis.Redis:
        s = self.settings
        return aioredis.Redis(
            host=s.host, port=s.port, unix_socket_path=str(s.unix_socket) if s.unix_socket else None,
            db=s.db, username=s.username, password=password, socket_timeout=s.timeout,
            socket_connect_timeout=s.timeout, retry=Retry(NoBackoff(), 0),  # fail now, not later
            single_connection_client=True, client_name="rollbackd-probe")

    async def _guarded(self, password: str | None, started: float) -> Observation:
        s = self.settings
        try:
            client = self._client(password)
            try:
                async with asyncio.timeout(s.timeout):
                    figures = await self._measure(client)
            finally:
                await client.aclose()
        except (TimeoutError, RedisTimeoutError):
            return self._obs(Status.FAIL, f"redis {self.where} gave no answer within "
                             f"{s.timeout:g}s.", started, Symptom.TIMEOUT)
        except RedisError as exc:
            return self._failure(exc, started)
        except Exception as exc:  # a probe never raises: a crash is a probe error
            return self._obs(Status.ERROR, f"probe error: {type(exc).__name__}: {exc}", started,
                             Symptom.PROBE_ERROR)
        return self._judge(figures, started)

    def _failure(self, exc: RedisError, started: float) -> Observation:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError |
                      NoPermissionError) or any(w in text for w in _AUTH_WORDS):
            return self._obs(Status.ERROR, f"redis {self.where} refused the probe's credentials: "
                             f"{text}.", started, Symptom.PROBE_ERROR)
        if isinstance(exc, BusyLoadingError):
            return self._obs(Status.FAIL, f"redis {self.where} is up but still loading its "
                             "dataset.", started, Symptom.DEPENDENCY_DOWN)
        if isinstance(exc, RedisConnectionError):
            return self._obs(Status.FAIL, f"cannot connect to redis {self.where}: {text}.",
                             started, Symptom.UNREACHABLE)
        if isinstance(exc, ResponseError):
            return self._obs(Status.FAIL, f"redis {self.where} answered with an error: {text}.",
                             started, Symptom.BAD_RESPONSE)
        return self._obs(Status.ERROR, f"probe error on redis {self.where}: "
                         f"{type(exc).__name__}: {text}.", started, Symptom.PROBE_ERROR)

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
            return self._obs(Status.OK, f"{said}.", started, None, metrics)
        metrics["sessions"] = float(f.sessions)
        metrics["sessions_scan_complete"] = 1.0 if f.complete else 0.0
        found = f"{f.sessions}{'' if f.complete else '+'} keys match {s.session_pattern!r}"
        if f.sessions < s.min_sessions:
            if f.complete:
                return self._obs(Status.FAIL, f"{said}, but only {found}, fewer than "
                                 f"min_sessions {s.min_sessions}: sessions were lost.", started,
                                 Symptom.ROWS_COLLAPSED, metrics)
            found += f" in the first {s.scan_max_keys} keys scanned (not conclusive)"
        before = self._good_sessions
        if f.complete and s.sessions_max_drop is not None and before is not None \
                and before >= s.sessions_baseline_min \
                and f.sessions < before * (1 - s.sessions_max_drop):
            drop = 1 - f.sessions / before
            return self._obs(Status.FAIL, f"{said}, but session keys fell from {before} to "
                             f"{f.sessions} ({drop:.0%} drop, limit {s.sessions_max_drop:.0%}): "
                             "sessions were lost.", started, Symptom.ROWS_COLLAPSED, metrics)
        if f.complete:
            self._good_sessions = f.sessions
        return self._obs(Status.OK, f"{said}, {found}.", started, None, metrics)

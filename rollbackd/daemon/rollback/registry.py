"""Executor kinds by name: the one map config sections are turned into executors through."""

from __future__ import annotations

from typing import Any

from rollbackd.daemon.rollback.base import Executor
from rollbackd.policies.plans import Component


def build_executors(target: Any, name: str = "") -> dict[Component, Executor]:
    """The executors a target's config asks for, keyed by the component they act on."""
    found: dict[Component, Executor] = {}
    if target.deployment is not None:
        from rollbackd.daemon.rollback.docker import DockerExecutor
        from rollbackd.daemon.rollback.git_service import GitServiceExecutor
        from rollbackd.daemon.rollback.kubernetes import KubernetesExecutor

        # The docker and kubernetes clients are imported by their executors, only when used.
        builders: dict[str, Any] = {"git": GitServiceExecutor, "docker": DockerExecutor,
                                    "kubernetes": KubernetesExecutor}
        executor = builders[target.deployment.kind](target.deployment)
        found[executor.component] = executor
    database = getattr(target, "database", None)
    if database is not None:
        from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor

        if database.kind == "sqlite":
            found[Component.DATABASE] = SqliteExecutor(database)
        elif database.kind == "postgres" and database.dsn_file is not None:
            from rollbackd.daemon.rollback.postgres_restore import PostgresExecutor

            found[Component.DATABASE] = PostgresExecutor(database)
    redis = getattr(target, "redis", None)
    if redis is not None:
        from rollbackd.daemon.rollback.redis_sessions import RedisSessionsExecutor

        found[Component.SESSIONS] = RedisSessionsExecutor(redis)
    key = getattr(target, "key", None)
    if key is not None:
        from rollbackd.daemon.rollback.key_restore import KeyExecutor

        found[Component.KEY] = KeyExecutor(key)
    if getattr(target, "accounts", None) is not None:
        from rollbackd.daemon.rollback.lockdown import LockdownExecutor

        found[Component.ACCOUNTS] = LockdownExecutor(name, target)
    return found

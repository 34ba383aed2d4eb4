"""Executor kinds by name: the one map config sections are turned into executors through."""

from __future__ import annotations

from typing import Any

from daemon.rollback.base import Executor
from policies.plans import Component


def build_executors(target: Any) -> dict[Component, Executor]:
    """The executors a target's config asks for, keyed by the component they act on."""
    found: dict[Component, Executor] = {}
    if target.deployment is not None:
        from daemon.rollback.git_service import GitServiceExecutor

        builders = {"git": GitServiceExecutor}
        executor = builders[target.deployment.kind](target.deployment)
        found[executor.component] = executor
    return found

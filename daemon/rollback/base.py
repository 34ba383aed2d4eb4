"""The executor shape every deployment backend has, and the errors that steer the runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from policies.plans import Plan, StepSpec


class StepFailed(Exception):
    """The step did not do its job; the runner stops the plan and escalates."""


@dataclass(frozen=True)
class StepContext:
    incident_id: int
    target: str
    plan: Plan


class Executor(Protocol):
    backend: ClassVar[str]
    steps: tuple[StepSpec, ...]
    """The backend's rollback steps, in order; the plan puts them between checklist and verify."""

    async def current_version(self) -> str | None: ...

    async def version_exists(self, version: str) -> bool: ...

    async def evidence(self) -> dict[str, Any]:
        """What a person needs to see of the current deployment; never secrets."""
        ...

    async def run_step(self, name: str, ctx: StepContext) -> str:
        """Run one of `steps`; return a one-line detail, raise StepFailed when it failed."""
        ...

"""The executor shape every backend has, and the errors that steer the runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from rollbackd.policies.plans import Capabilities, Component, Plan


class StepFailed(Exception):
    """The step did not do its job; the runner stops the plan and escalates."""


class Found(StrEnum):
    """What a look at the world says of a step a crash cut off."""

    DONE = "done"  # its effect is there, whole: journaled done, the plan may go on
    ABSENT = "absent"  # nothing of it happened (or it changes nothing): it runs again on resume
    UNKNOWN = "unknown"  # partly there, or no way to tell: a person looks first


@dataclass(frozen=True)
class Effect:
    found: Found
    what: str
    """What was found, in words for the held mail, `show` and the report."""
    local: bool = False
    """Judged from this host's own records (a command's receipt), not from the world: another
    instance that owned the target when the step ran leaves none here."""


def done(what: str) -> Effect:
    return Effect(Found.DONE, what)


def absent(what: str) -> Effect:
    return Effect(Found.ABSENT, what)


def unknown(what: str) -> Effect:
    return Effect(Found.UNKNOWN, what)


CHECK_ONLY = absent("a check that changes nothing: it runs again when the plan resumes")


class StepHeld(StepFailed):
    """The step found, before changing anything, what a person must decide first (local edits
    in the way): the runner holds the incident, without counting a failed remediation."""


@dataclass(frozen=True)
class StepContext:
    incident_id: int
    target: str
    plan: Plan
    receipts: Path | None = None
    """Where command steps record that their command started and how it ended: a restart
    leaves no other trace a restart of the daemon could find (rollbackd/daemon/rollback/receipts.py)."""

    def target_of(self, component: Component | str) -> str:
        value = self.plan.targets.get(component)
        if not value:
            raise StepFailed(f"the plan names no {component} target")
        return value

    def backup_of(self, component: Component) -> int:
        """The catalog id of the backup the plan restores `component` from."""
        value = self.target_of(component)
        if not value.isdigit():
            raise StepFailed(f"the plan's {component} target {value!r} is not a backup id")
        return int(value)


@runtime_checkable
class TellsLocalChanges(Protocol):
    """An executor whose deployment can carry local edits (a git work tree)."""

    async def local_changes(self) -> list[str] | None:
        """Uncommitted and untracked files, as `git status --short` shows them; [] if none;
        None when it cannot tell (counted as changed)."""
        ...


@runtime_checkable
class StampsVersion(Protocol):
    """An executor that can tell, without asking its deployment, that the version has not
    moved since it last looked (a git work tree: a stat of HEAD and its ref)."""

    def version_stamp(self) -> tuple[object, ...] | None:
        """Changes whenever the deployed version may have; None when it cannot tell (the
        version is then asked of the deployment every time)."""
        ...


@runtime_checkable
class AttachesJournal(Protocol):
    """An executor that journals what it does beyond its step (the users' notice: one row per
    mailed user) and mails through the daemon's SMTP settings."""

    def attach_journal(self, journal: Any, outbox: Any,
                       hook: Callable[[str, str], None] | None = None,
                       owner: Callable[[], bool] | None = None) -> None: ...


@dataclass(frozen=True)
class Process:
    """What a deployment backend can tell of the app's process: the start period's clock."""

    running: bool | None
    """False: exited, or the container stopped or crash-looping; None: cannot tell."""
    started_ago: float | None
    """Seconds since the process (container, newest pod) started; None: cannot tell."""
    what: str
    """Which process, in words: "pid 4242", "container grading", "pod grading-7c9f-x2"."""


@runtime_checkable
class TellsProcess(Protocol):
    """An executor that can tell whether the app's process runs and since when."""

    async def process(self) -> Process:
        """Never raises: what cannot be read is None."""
        ...


class Executor(Protocol):
    component: ClassVar[Component]
    backend: ClassVar[str]

    def capabilities(self) -> Capabilities:
        """The steps this executor runs for each capability it has, in order."""
        ...

    async def current_version(self) -> str | None: ...

    async def evidence(self) -> dict[str, Any]:
        """What a person needs to see of the current state; never secrets."""
        ...

    async def backup_current(self, ctx: StepContext) -> str:
        """Keep the current state before anything changes (the checklist's backup step)."""
        ...

    async def verify_target(self, ctx: StepContext) -> str:
        """Check the rollback target is there and sound; raise StepFailed if not."""
        ...

    async def run_step(self, name: str, ctx: StepContext) -> str:
        """Run one of its steps; return a one-line detail, raise StepFailed when it failed."""
        ...

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        """Whether step `name`, journaled running at `since` and cut off by a crash, had its
        effect: asked of the world (the work tree, the file, the container, the key), never
        of the journal. May raise; the caller turns that into UNKNOWN."""
        ...

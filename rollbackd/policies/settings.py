"""Policy settings: the limits every automatic action is held to ([policy] and per target)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rollbackd.probes.base import PositiveDuration

PlanName = Literal["deployment_rollback", "database_rollback", "data_recovery", "key_restore",
                   "escalate"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ClassPolicy(BaseModel):
    """How one incident class is handled for a target: [policy.classes.<class>]."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """False: the class is recognised (so it keeps its symptoms) but nothing is done or sent."""
    escalate_only: bool = False
    """True: detect and escalate this class, never act on it."""
    plan: PlanName | None = None
    """Replace the tree's default plan for this class."""


class MaintenanceWindow(BaseModel):
    """A weekly window (UTC) in which the daemon observes but does not act."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    """Days of the week the window starts on."""
    start: str
    """HH:MM, UTC."""
    duration: PositiveDuration
    """How long the window lasts from `start`."""

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", v)
        if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise ValueError(f"expected HH:MM, got {v!r}")
        return v


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    auto_rollback: bool = True
    """False: detect, record and escalate, never act without a person."""
    dry_run: bool = False
    """Plan and record what would run; execute nothing."""
    shadow: bool = False
    """Classify live and record "would have rolled back to X because ..."; never act."""
    stable_after: PositiveDuration = 600.0
    """A version passing every probe this long becomes known-good."""
    max_rollbacks: int = Field(default=3, ge=0)
    """Automatic rollbacks allowed per target within `window`."""
    window: PositiveDuration = 3600.0
    """The window `max_rollbacks` and `breaker_failures` are counted in."""
    cooldown: PositiveDuration = 300.0
    """Quiet time after an automatic rollback before the next may start."""
    breaker_failures: int = Field(default=2, ge=1)
    """Failed remediations within `window` that open the circuit breaker."""
    breaker_reset: PositiveDuration = 1800.0
    """An open breaker turns half-open (one attempt allowed) after this long."""
    verify_timeout: PositiveDuration = 60.0
    """How long the probes get to pass again after a rollback."""
    flap_changes: int = Field(default=6, ge=2)
    """Healthy/failing changes within `flap_window` that mark a target flapping: hold, escalate."""
    flap_window: PositiveDuration = 600.0
    """The window `flap_changes` are counted in."""
    auto_destructive: bool = False
    """Destructive steps (database restore, session flush, lockout) run without approval."""
    restore_loss_threshold: int = Field(default=0, ge=0)
    """A restore that would lose more writes than this needs approval, even if auto_destructive."""
    two_person: bool = False
    """The irreversible plans (`two_person_plans`) run only once two different uids have asked
    for them: a lockdown's requester and its approver, or two approvers of a key reset. Off by
    default so that a one-admin installation can still act at 3 a.m.; turn it on wherever two
    people hold the keys."""
    two_person_plans: list[Literal["lockdown", "key_reset", "data_recovery",
                                   "database_rollback"]] = ["lockdown", "key_reset"]
    """The plan kinds `two_person` applies to."""
    maintenance: list[MaintenanceWindow] = []
    classes: dict[
        Literal["data_corruption", "dependency_down", "app_down", "key_invalid", "auth_broken",
                "perf_degraded"],
        ClassPolicy,
    ] = {}

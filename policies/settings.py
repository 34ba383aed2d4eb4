"""Policy settings: the limits every automatic action is held to ([policy] and per target)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from probes.base import PositiveDuration


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_rollback: bool = True
    """False: detect, record and escalate, never act without a person."""
    dry_run: bool = False
    """Plan and record what would run; execute nothing."""
    stable_after: PositiveDuration = 600.0
    """A version passing every probe this long becomes known-good."""
    max_rollbacks: int = Field(default=3, ge=0)
    """Automatic rollbacks allowed per target within `window`."""
    window: PositiveDuration = 3600.0
    cooldown: PositiveDuration = 300.0
    """Quiet time after an automatic rollback before the next may start."""
    breaker_failures: int = Field(default=2, ge=1)
    """Failed remediations within `window` that open the circuit breaker."""
    breaker_reset: PositiveDuration = 1800.0
    """An open breaker turns half-open (one attempt allowed) after this long."""
    verify_timeout: PositiveDuration = 60.0
    """How long the probes get to pass again after a rollback."""

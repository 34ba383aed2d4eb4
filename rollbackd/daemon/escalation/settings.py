"""Escalation config: contacts by role and tier, routing rules, ack timeouts and storm grouping."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rollbackd.policies.classify import IncidentClass
from rollbackd.probes.base import PositiveDuration

Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]

Condition = Literal["breaker_open", "key_disaster", "rollback_failed", "limit_reached"]
"""Facts about an incident that call for more people than its class does."""

EventKind = Literal["opened", "started", "resolved", "failed", "held", "escalated", "redeploy",
                    "digest", "backup", "probe_account", "other"]
"""What a mail is about, as routing rules name it (each notice kind routes as one of these)."""


class _Frozen(BaseModel):
    # The same settings as rollbackd.daemon.config.Frozen; config.py imports this module, not the reverse.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Contact(_Frozen):
    """`[contacts.<role>]`: the people of one role."""

    emails: Annotated[list[Email], Field(min_length=1)]
    """Every address of the role; each gets the role's mail."""
    tier: int = Field(default=1, ge=1)
    """Escalation tier. Tier 1 is mailed at once; tier n is mailed when an incident that needs a
    person stays unacknowledged through the ack timeouts of the tiers below, and from then on
    hears every later mail of that incident."""


class RoleNames(_Frozen):
    """`[escalation.roles]`: which contact role plays each part of the runbook."""

    oncall: str = "oncall"
    """The primary on-call engineer: told about every incident."""
    dba: str = "dba"
    """The database admin: told about database incidents."""
    devops: str = "devops"
    """The DevOps lead: told about deployment incidents."""
    emergency: str = "emergency"
    """The emergency contact (the CTO): breaker open, key disaster, failed rollback."""


class Route(_Frozen):
    """`[[escalation.routes]]`: one rule; a mail goes to the roles of every rule that matches."""

    roles: Annotated[list[str], Field(min_length=1)]
    """Contact roles to mail; the names oncall/dba/devops/emergency go through escalation.roles."""
    classes: list[IncidentClass] = []
    """Incident classes the rule applies to; empty: every class, and mails without an incident."""
    events: list[EventKind] = []
    """Mail events the rule applies to; empty: every event."""
    when: list[Condition] = []
    """Empty: always; otherwise the rule applies only if one of these holds."""


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route(classes=[IncidentClass.DATA_CORRUPTION, IncidentClass.AUTH_BROKEN,
                   IncidentClass.KEY_INVALID], roles=["dba", "oncall"]),
    Route(classes=[IncidentClass.APP_DOWN, IncidentClass.PERF_DEGRADED],
          roles=["devops", "oncall"]),
    Route(classes=[IncidentClass.DEPENDENCY_DOWN], roles=["oncall"]),
    Route(events=["redeploy"], roles=["devops", "oncall"]),
    Route(events=["backup"], roles=["dba"]),
    Route(events=["probe_account"], roles=["oncall"]),
    Route(when=["breaker_open", "key_disaster", "rollback_failed", "limit_reached"],
          roles=["emergency"]),
)


def _listify(value: Any) -> Any:
    # One duration for every tier is the common case; a list sets each tier's own.
    return value if isinstance(value, list | tuple) else [value]


class EscalationSettings(_Frozen):
    """`[escalation]`: who hears about what, how fast it climbs the tiers, and storm grouping."""

    roles: RoleNames = RoleNames()
    """Which contact role plays on-call, database admin, DevOps lead and emergency."""
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    """Routing rules; given in the config they replace the defaults entirely."""
    ack_timeout: Annotated[tuple[PositiveDuration, ...], BeforeValidator(_listify),
                           Field(min_length=1)] = (900.0,)
    """How long each tier has to acknowledge (`rollbackctl ack ID`) before the next tier is
    mailed: one duration for all tiers, or a list (tier 1, tier 2, ...; the last one repeats)."""
    check_interval: PositiveDuration = 5.0
    """How often unacknowledged incidents are checked against their tier's timeout."""
    storm_window: PositiveDuration = 300.0
    """The window in which incidents are counted for storm grouping."""
    storm_max: int = Field(default=5, ge=1)
    """Incidents opened within storm_window that still get their own mails; the mails of any
    further incident are held and sent as digests."""
    digest_delay: PositiveDuration = 60.0
    """A held mail waits at most this long before a digest lists it (at most one digest per
    delay, so a storm of any size yields a bounded number of mails)."""

    def role(self, name: str) -> str:
        """A route's role name as the contact role it stands for."""
        return str(getattr(self.roles, name)) if name in RoleNames.model_fields else name

    def timeout_for(self, tier: int) -> float:
        return self.ack_timeout[min(tier, len(self.ack_timeout)) - 1]

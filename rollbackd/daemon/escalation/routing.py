"""Who gets a mail: routing rules by incident class, event and condition, filtered by tier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rollbackd.daemon.escalation.settings import Contact, EscalationSettings, EventKind, Route
from rollbackd.policies.decision import KEY_DISASTER


@dataclass(frozen=True)
class MailFacts:
    """What routing looks at; built from the journal by the outbox, so routing stays pure."""

    event: EventKind
    incident_class: str | None = None
    """None: the mail is not about one incident (a redeploy warning, a digest)."""
    conditions: frozenset[str] = field(default_factory=frozenset)


def conditions(event: EventKind, reason: str, rollback_failed: bool,
               breaker_open: bool) -> frozenset[str]:
    found = set()
    if breaker_open:
        found.add("breaker_open")
    if KEY_DISASTER in reason:
        found.add("key_disaster")
    if rollback_failed or event == "failed":
        found.add("rollback_failed")
    return frozenset(found)


def _matches(route: Route, facts: MailFacts) -> bool:
    if route.classes and facts.incident_class not in route.classes:
        return False
    if route.events and facts.event not in route.events:
        return False
    return not route.when or bool(facts.conditions & set(route.when))


def routed_roles(settings: EscalationSettings, facts: MailFacts) -> tuple[str, ...]:
    """The contact roles the matching rules name, in rule order, each once."""
    roles = (settings.role(r) for route in settings.routes if _matches(route, facts)
             for r in route.roles)
    return tuple(dict.fromkeys(roles))


def _addresses(contacts: Iterable[Contact]) -> list[str]:
    return [a for c in contacts for a in c.emails]


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


def recipients(settings: EscalationSettings, contacts: Mapping[str, Contact], facts: MailFacts,
               tier: int = 1, paged: Iterable[str] = ()) -> tuple[str, ...]:
    """Routed roles' contacts up to the incident's tier, plus everyone an escalation paged.

    A mail is never dropped because routing found nobody: it falls back to the on-call role,
    then to every tier-1 contact.
    """
    roles = routed_roles(settings, facts)
    found = _addresses(contacts[r] for r in roles if r in contacts and contacts[r].tier <= tier)
    if not found:
        oncall = contacts.get(settings.roles.oncall)
        found = _addresses([oncall]) if oncall else []
    if not found:
        found = _addresses(c for c in contacts.values() if c.tier == 1)
    return _unique([*found, *paged])


def next_tier(contacts: Mapping[str, Contact], tier: int) -> int | None:
    """The lowest tier above `tier` that has anyone in it."""
    return min((c.tier for c in contacts.values() if c.tier > tier), default=None)


def tier_recipients(settings: EscalationSettings, contacts: Mapping[str, Contact],
                    facts: MailFacts, tier: int) -> tuple[str, ...]:
    """Who an escalation to `tier` pages: that tier's contacts in the routed roles, or, when
    routing names nobody there, everyone in that tier (the next line must hear of it)."""
    roles = set(routed_roles(settings, facts))
    in_tier = {name: c for name, c in contacts.items() if c.tier == tier}
    routed = _addresses(c for name, c in in_tier.items() if name in roles)
    return _unique(routed or _addresses(in_tier.values()))

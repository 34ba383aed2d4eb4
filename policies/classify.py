"""The decision tree's first half: a target's failing probes -> one incident class."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from policies.debounce import ProbeHealth


class IncidentClass(StrEnum):
    DATA_CORRUPTION = "data_corruption"
    APP_DOWN = "app_down"
    AUTH_BROKEN = "auth_broken"
    PERF_DEGRADED = "perf_degraded"
    KEY_INVALID = "key_invalid"


# probe name -> (probe kind, its debounced health)
TargetHealth = Mapping[str, tuple[str, ProbeHealth]]


def _failing_kinds(health: TargetHealth, kinds: set[str]) -> list[str]:
    return [name for name, (kind, h) in health.items() if kind in kinds and h.failing]


def _app_down(health: TargetHealth) -> list[str]:
    return _failing_kinds(health, {"http_health"})


# Precedence order of DESIGN.md: the first class whose rule matches wins, because a dead app
# also fails every other check and must not be taken for, say, an auth incident.
RULES: list[tuple[IncidentClass, Callable[[TargetHealth], list[str]]]] = [
    (IncidentClass.APP_DOWN, _app_down),
]


def classify(health: TargetHealth) -> tuple[IncidentClass, list[str]] | None:
    """The incident class and the probes that justify it, or None when nothing is wrong."""
    for incident_class, rule in RULES:
        probes = rule(health)
        if probes:
            return incident_class, probes
    return None


def all_passing(health: TargetHealth) -> bool:
    return bool(health) and all(h.passing for _, h in health.values())

"""The decision tree's first half: a target's failing probes -> one incident class."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from enum import StrEnum

from rollbackd.policies.debounce import ProbeHealth
from rollbackd.probes.observation import Symptom
from rollbackd.probes.registry import Role, Tells, kinds_that, kinds_with


class IncidentClass(StrEnum):
    DATA_CORRUPTION = "data_corruption"
    DEPENDENCY_DOWN = "dependency_down"
    APP_DOWN = "app_down"
    KEY_INVALID = "key_invalid"
    AUTH_BROKEN = "auth_broken"
    PERF_DEGRADED = "perf_degraded"


# probe name -> (probe kind, its debounced health)
TargetHealth = Mapping[str, tuple[str, ProbeHealth]]

# What each kind means to the tree is declared with the kind (rollbackd/probes/registry.py).
INTEGRITY_KINDS = kinds_with(Role.INTEGRITY)
HEALTH_KINDS = kinds_with(Role.HEALTH)
LOGIN_KINDS = kinds_with(Role.LOGIN)
KEY_KINDS = kinds_with(Role.KEY)
PERF_KINDS = kinds_with(Role.HEALTH, Role.LOGIN, Role.METRIC)
DEPENDENCY_KINDS = kinds_that(Tells.DEPENDENCY)
SESSION_KINDS = kinds_that(Tells.SESSIONS)
CORRUPTION = {Symptom.INTEGRITY, Symptom.MISSING_TABLE, Symptom.BAD_REVISION,
              Symptom.ROWS_COLLAPSED}
DOWN = {Symptom.UNREACHABLE, Symptom.TIMEOUT}
PROBE_ACCOUNT = {Symptom.WRONG_CREDENTIALS, Symptom.ACCOUNT_LOCKED}
"""The probe's own account refused or locked: explained by that account (a wrong password in
its file, a lockout after the wrong password), not by the app's login."""


def _failing(health: TargetHealth, kinds: Set[str],
             symptoms: set[Symptom] | None = None) -> list[str]:
    return [
        name for name, (kind, h) in health.items()
        if kind in kinds and h.failing and (symptoms is None or h.symptom in symptoms)
    ]


def _data_corruption(health: TargetHealth) -> list[str]:
    # Sessions and reset tokens gone from Redis are lost data too, restored like a database.
    return _failing(health, INTEGRITY_KINDS, CORRUPTION) + _failing(
        health, SESSION_KINDS, {Symptom.ROWS_COLLAPSED})


def _dependency_down(health: TargetHealth) -> list[str]:
    # The app's database or Redis itself cannot be reached: the deployment is not to blame.
    return _failing(health, DEPENDENCY_KINDS, DOWN | {Symptom.DEPENDENCY_DOWN})


def _failures_started(health: TargetHealth, kinds: Set[str],
                      symptoms: set[Symptom] | None = None) -> bool:
    """Some probe of these kinds is failing or on its way there (below its threshold)."""
    return any(
        kind in kinds and (h.failing or h.failures > 0)
        and (symptoms is None or h.symptom in symptoms)
        for kind, h in health.values()
    )


def _app_down(health: TargetHealth) -> list[str]:
    # A dependency on its way to failing may be what took the app down: wait for its verdict
    # rather than roll back a deployment that is not to blame.
    if _failures_started(health, DEPENDENCY_KINDS, DOWN | {Symptom.DEPENDENCY_DOWN}):
        return []
    # So may a key it cannot read (an app that dies at start without its key): the key's
    # verdict comes first, whichever probe happened to run first.
    if _failures_started(health, KEY_KINDS):
        return []
    return [p for p in _failing(health, HEALTH_KINDS) if health[p][1].symptom is not Symptom.SLOW]


def _key_invalid(health: TargetHealth) -> list[str]:
    return _failing(health, KEY_KINDS)


def _auth_broken(health: TargetHealth) -> list[str]:
    # "Health passes but login fails": a health probe that has begun failing means a dying app,
    # which fails login too; that is app_down once the health probe reaches its threshold.
    if _failures_started(health, HEALTH_KINDS, set(Symptom) - {Symptom.SLOW}):
        return []
    # A refused or locked probe account alone is that account's trouble (probe_account_trouble);
    # broken login needs more: a 5xx, or a second known-good account refused as well.
    return _failing(health, LOGIN_KINDS, {Symptom.SERVER_ERROR, Symptom.LOGINS_REFUSED,
                                          Symptom.BAD_RESPONSE})


def _perf_degraded(health: TargetHealth) -> list[str]:
    return _failing(health, PERF_KINDS, {Symptom.SLOW})


# Precedence of DESIGN.md: the first class whose rule matches wins, because a dead app also
# fails login, and a dead database also takes the app down: neither is an auth incident, and
# the second is not the deployment's fault. An unreadable key is above app_down for the same
# reason: an app that cannot decrypt dies, and a deployment rollback would not bring the key.
RULES: list[tuple[IncidentClass, Callable[[TargetHealth], list[str]]]] = [
    (IncidentClass.DATA_CORRUPTION, _data_corruption),
    (IncidentClass.DEPENDENCY_DOWN, _dependency_down),
    (IncidentClass.KEY_INVALID, _key_invalid),
    (IncidentClass.APP_DOWN, _app_down),
    (IncidentClass.AUTH_BROKEN, _auth_broken),
    (IncidentClass.PERF_DEGRADED, _perf_degraded),
]


def classify(health: TargetHealth) -> tuple[IncidentClass, list[str]] | None:
    """The incident class and the probes that justify it, or None when nothing is wrong.

    A class disabled by policy is still classified here, so that it keeps the classes below it
    from claiming its symptoms; the decision then ignores it.
    """
    for incident_class, rule in RULES:
        probes = rule(health)
        if probes:
            return incident_class, probes
    return None


def probe_account_trouble(health: TargetHealth) -> dict[str, Symptom]:
    """Login probes failing because their own account is refused or locked (probe -> symptom):
    no incident class claims them; people are told, nothing is rolled back."""
    return {name: h.symptom for name, (kind, h) in health.items()
            if kind in LOGIN_KINDS and h.failing and h.symptom in PROBE_ACCOUNT}


def all_passing(health: TargetHealth) -> bool:
    return bool(health) and all(h.passing for _, h in health.values())

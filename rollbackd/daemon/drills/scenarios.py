"""The five drill scenarios: the incident each must become, what detects it, what it needs."""

from __future__ import annotations

from dataclasses import dataclass

from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component


@dataclass(frozen=True)
class Scenario:
    name: str
    incident_class: IncidentClass
    what: str
    """What the injector does, in a few words (reports and refusals)."""
    detectors: frozenset[str]
    """Probe kinds that can see it; a target needs one of them."""
    capabilities: tuple[Capability, ...]
    """The daemon needs one of these to repair it."""
    backups: tuple[str, ...] = ()
    """Backup kinds taken fresh (and verified) right before the fault goes in."""
    slow_probe: bool = False
    """The detecting probe must judge latency (max_latency or a latency baseline)."""

    @property
    def component(self) -> Component:
        return {Capability.DEPLOYMENT_ROLLBACK: Component.DEPLOYMENT,
                Capability.DATABASE_RESTORE: Component.DATABASE,
                Capability.DATABASE_DOWNGRADE: Component.DATABASE,
                Capability.KEY_RESTORE: Component.KEY}[self.capabilities[0]]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("app_down", IncidentClass.APP_DOWN, "deploy a version that will not start",
             frozenset({"http_health", "docker_container", "k8s_deployment"}),
             (Capability.DEPLOYMENT_ROLLBACK,)),
    Scenario("auth_broken", IncidentClass.AUTH_BROKEN, "apply a migration that breaks login",
             frozenset({"login"}), (Capability.DATABASE_DOWNGRADE, Capability.DATABASE_RESTORE),
             backups=("database",)),
    Scenario("data_corruption", IncidentClass.DATA_CORRUPTION,
             "corrupt a database page or drop a table",
             frozenset({"sqlite_integrity", "postgres_integrity"}),
             (Capability.DATABASE_RESTORE,), backups=("database",)),
    Scenario("perf_degraded", IncidentClass.PERF_DEGRADED, "deploy a slow version",
             frozenset({"http_health", "login"}), (Capability.DEPLOYMENT_ROLLBACK,),
             slow_probe=True),
    Scenario("key_invalid", IncidentClass.KEY_INVALID, "replace the encryption key",
             frozenset({"fernet_key"}), (Capability.KEY_RESTORE,), backups=("key",)),
)}

"""Probe kinds by name: each kind's settings, where its class lives, and what it tells.

The one map the config, the scheduler and the decision tree look kinds up in. A kind's class is
named as "module:Class" (as uvicorn names its parts) and imported when a configured probe is
built, so a daemon loads psycopg, redis, docker, kubernetes or cryptography only for the kinds
it runs. The settings models are imported here: the config validates every kind, and no
settings module imports its kind's libraries.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum

from rollbackd.probes.alertmanager import AlertmanagerSettings
from rollbackd.probes.backup_freshness import BackupFreshnessProbe, BackupFreshnessSettings, BackupSource
from rollbackd.probes.base import Probe, ProbeSettings
from rollbackd.probes.docker_container import DockerContainerSettings
from rollbackd.probes.fernet_key import FernetKeySettings
from rollbackd.probes.http_health import HttpHealthSettings
from rollbackd.probes.journey import JourneySettings
from rollbackd.probes.k8s_deployment import K8sDeploymentSettings
from rollbackd.probes.log_errors import LogErrorsSettings
from rollbackd.probes.login import LoginSettings
from rollbackd.probes.postgres_integrity import PostgresIntegritySettings
from rollbackd.probes.prometheus_query import PrometheusQuerySettings
from rollbackd.probes.redis import RedisSettings
from rollbackd.probes.sqlite_integrity import SqliteIntegritySettings


class Role(StrEnum):
    """Which question of the decision tree a failing probe of the kind answers."""

    HEALTH = "health"  # is the app up? (app_down; slow: perf_degraded)
    LOGIN = "login"  # can a known-good user log in? (auth_broken; slow: perf_degraded)
    INTEGRITY = "integrity"  # is the data whole? (data_corruption)
    KEY = "key"  # can the app decrypt its data? (key_invalid)
    DEPENDENCY = "dependency"  # is a service the app needs up? (dependency_down)
    METRIC = "metric"  # a measured figure crossed its limit (slow: perf_degraded)
    WATCH = "watch"  # recorded, shown, verified after a rollback; no incident class of its own


class Tells(StrEnum):
    """What a kind's observations say besides pass or fail."""

    REVISION = "revision"  # Observation.version is the schema revision
    KEY_FINGERPRINT = "key_fingerprint"  # Observation.version is the key's fingerprint
    SESSIONS = "sessions"  # rows_collapsed means the app's sessions were lost
    LATENCY = "latency"  # metrics["latency_seconds"] (a latency baseline can watch it)
    DEPENDENCY = "dependency"  # unreachable means a service the app needs is down


@dataclass(frozen=True)
class Kind:
    settings: type[ProbeSettings]
    probe: str
    """The probe class as "module:Class", imported when a probe of the kind is built."""
    role: Role
    tells: frozenset[Tells] = frozenset()


def _kind(settings: type[ProbeSettings], probe: str, role: Role, *tells: Tells) -> Kind:
    return Kind(settings, probe, role, frozenset(tells))


# http_health first: config errors list the kinds in this order.
PROBE_KINDS: dict[str, Kind] = {
    "http_health": _kind(HttpHealthSettings, "rollbackd.probes.http_health:HttpHealthProbe", Role.HEALTH,
                         Tells.LATENCY),
    "login": _kind(LoginSettings, "rollbackd.probes.login:LoginProbe", Role.LOGIN, Tells.LATENCY),
    # A journey's log-in step fails as a login probe does; its later steps fail with
    # step_failed, which no incident class claims (rollbackd/policies/classify.py).
    "journey": _kind(JourneySettings, "rollbackd.probes.journey:JourneyProbe", Role.LOGIN),
    "sqlite_integrity": _kind(SqliteIntegritySettings,
                              "rollbackd.probes.sqlite_integrity:SqliteIntegrityProbe", Role.INTEGRITY,
                              Tells.REVISION),
    "postgres_integrity": _kind(PostgresIntegritySettings,
                                "rollbackd.probes.postgres_integrity:PostgresIntegrityProbe",
                                Role.INTEGRITY, Tells.REVISION, Tells.DEPENDENCY),
    "redis": _kind(RedisSettings, "rollbackd.probes.redis:RedisProbe", Role.DEPENDENCY, Tells.SESSIONS,
                   Tells.DEPENDENCY),
    "fernet_key": _kind(FernetKeySettings, "rollbackd.probes.fernet_key:FernetKeyProbe", Role.KEY,
                        Tells.KEY_FINGERPRINT),
    "log_errors": _kind(LogErrorsSettings, "rollbackd.probes.log_errors:LogErrorsProbe", Role.WATCH),
    "backup_freshness": _kind(BackupFreshnessSettings,
                              "rollbackd.probes.backup_freshness:BackupFreshnessProbe", Role.WATCH),
    "prometheus_query": _kind(PrometheusQuerySettings,
                              "rollbackd.probes.prometheus_query:PrometheusQueryProbe", Role.METRIC),
    "alertmanager": _kind(AlertmanagerSettings, "rollbackd.probes.alertmanager:AlertmanagerProbe",
                          Role.HEALTH),
    "docker_container": _kind(DockerContainerSettings,
                              "rollbackd.probes.docker_container:DockerContainerProbe", Role.HEALTH),
    "k8s_deployment": _kind(K8sDeploymentSettings, "rollbackd.probes.k8s_deployment:K8sDeploymentProbe",
                            Role.HEALTH),
}


def probe_class(kind: str) -> type[Probe]:
    """The class of a kind, imported now (with its libraries) if it was not yet."""
    module, _, name = PROBE_KINDS[kind].probe.partition(":")
    cls: type[Probe] = getattr(importlib.import_module(module), name)
    return cls


def build_probe(name: str, settings: ProbeSettings, backups: BackupSource | None = None) -> Probe:
    """`backups`: the daemon's journal, for the kind that reads it (backup_freshness)."""
    if isinstance(settings, BackupFreshnessSettings):
        return BackupFreshnessProbe(name, settings, backups)
    return probe_class(settings.kind)(name, settings)  # type: ignore[call-arg]


def role(kind: str) -> Role | None:
    """The kind's role; None for a kind this registry does not know."""
    found = PROBE_KINDS.get(kind)
    return found.role if found is not None else None


def tells(kind: str, what: Tells) -> bool:
    found = PROBE_KINDS.get(kind)
    return found is not None and what in found.tells


def kinds_that(what: Tells) -> frozenset[str]:
    return frozenset(k for k, v in PROBE_KINDS.items() if what in v.tells)


def kinds_with(*roles: Role) -> frozenset[str]:
    return frozenset(k for k, v in PROBE_KINDS.items() if v.role in roles)

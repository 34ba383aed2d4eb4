"""Probe kinds by name: the one map the config and the scheduler look kinds up in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probes.alertmanager import AlertmanagerProbe, AlertmanagerSettings
from probes.backup_freshness import BackupFreshnessProbe, BackupFreshnessSettings, BackupSource
from probes.base import Probe, ProbeSettings
from probes.docker_container import DockerContainerProbe, DockerContainerSettings
from probes.fernet_key import FernetKeyProbe, FernetKeySettings
from probes.http_health import HttpHealthProbe, HttpHealthSettings
from probes.k8s_deployment import K8sDeploymentProbe, K8sDeploymentSettings
from probes.log_errors import LogErrorsProbe, LogErrorsSettings
from probes.login import LoginProbe, LoginSettings
from probes.postgres_integrity import PostgresIntegrityProbe, PostgresIntegritySettings
from probes.prometheus_query import PrometheusQueryProbe, PrometheusQuerySettings
from probes.redis import RedisProbe, RedisSettings
from probes.sqlite_integrity import SqliteIntegrityProbe, SqliteIntegritySettings

# kind -> (settings model, factory)
PROBE_KINDS: dict[str, tuple[type[ProbeSettings], Callable[[str, Any], Probe]]] = {
    "http_health": (HttpHealthSettings, HttpHealthProbe),
    "login": (LoginSettings, LoginProbe),
    "sqlite_integrity": (SqliteIntegritySettings, SqliteIntegrityProbe),
    "postgres_integrity": (PostgresIntegritySettings, PostgresIntegrityProbe),
    "redis": (RedisSettings, RedisProbe),
    "fernet_key": (FernetKeySettings, FernetKeyProbe),
    "log_errors": (LogErrorsSettings, LogErrorsProbe),
    "backup_freshness": (BackupFreshnessSettings, BackupFreshnessProbe),
    "prometheus_query": (PrometheusQuerySettings, PrometheusQueryProbe),
    "alertmanager": (AlertmanagerSettings, AlertmanagerProbe),
    "docker_container": (DockerContainerSettings, DockerContainerProbe),
    "k8s_deployment": (K8sDeploymentSettings, K8sDeploymentProbe),
}


def build_probe(name: str, settings: ProbeSettings, backups: BackupSource | None = None) -> Probe:
    """`backups`: the daemon's journal, for the probes that read it (backup_freshness)."""
    if isinstance(settings, BackupFreshnessSettings):
        return BackupFreshnessProbe(name, settings, backups)
    _, factory = PROBE_KINDS[settings.kind]
    return factory(name, settings)

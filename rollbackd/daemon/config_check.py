"""What check-config says beyond validation: warnings about a valid but doubtful config, and the
extras a config needs that are not installed. Pure over a loaded Config (bar one import lookup)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import cast

from rollbackd.daemon.config import Config, TargetConfig
from rollbackd.daemon.escalation.routing import MailFacts, recipients
from rollbackd.probes.base import ProbeSettings

INTEGRITY_PROBE = {"sqlite": "sqlite_integrity", "postgres": "postgres_integrity"}
"""The probe kind that watches each database kind: without it data_corruption goes unseen."""

EXTRA_MODULES = {"docker": "docker", "kubernetes": "kubernetes"}
"""extra name -> the module it installs, looked up (not imported) to tell whether it is there."""


@dataclass(frozen=True)
class Finding:
    """One problem, at a key path as the user wrote it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def module_installed(module: str) -> bool:
    """Looked up, not imported: check-config stays fast and the daemon imports it when used."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses the name: as good as not installed
        return False


def extra_installed(extra: str) -> bool:
    return module_installed(EXTRA_MODULES[extra])


def _probes(target: TargetConfig) -> dict[str, ProbeSettings]:
    return cast(dict[str, ProbeSettings], target.probes)


def _needed_extras(name: str, target: TargetConfig) -> list[tuple[str, str]]:
    """(key path, extra) for each part of the target that runs on an extra's library."""
    needs: list[tuple[str, str]] = []
    kind = target.deployment.kind if target.deployment is not None else None
    if kind in EXTRA_MODULES:
        needs.append((f"targets.{name}.deployment.kind", str(kind)))
    for pname, probe in _probes(target).items():
        extra = {"docker_container": "docker", "k8s_deployment": "kubernetes"}.get(probe.kind)
        if extra:
            needs.append((f"targets.{name}.probes.{pname}.kind", extra))
    return needs


def missing_extras(config: Config) -> list[Finding]:
    """Errors: parts of the config whose library is not installed, naming the extra to install."""
    found = []
    for name, target in config.targets.items():
        for key, extra in _needed_extras(name, target):
            if not extra_installed(extra):
                found.append(Finding(key, f"needs the {extra} extra, which is not installed: "
                                          f"pip install 'rollbackd[{extra}]'"))
    return found


def _duplicate_addresses(config: Config) -> list[Finding]:
    first: dict[str, str] = {}
    found = []
    for role, contact in config.contacts.items():
        for i, address in enumerate(contact.emails):
            key = f"contacts.{role}.emails[{i}]"
            seen = first.setdefault(address.lower(), key)
            if seen != key:
                found.append(Finding(key, f"{address!r} is also {seen} (addresses compare without "
                                          "letter case): that person gets every mail twice"))
    return found


def _probe_timeouts(config: Config) -> list[Finding]:
    return [
        Finding(f"targets.{t}.probes.{p}.timeout",
                f"{probe.timeout:g}s is not below the probe's interval ({probe.interval:g}s): "
                "a slow run makes the next one count as failed before it starts")
        for t, target in config.targets.items() for p, probe in _probes(target).items()
        if probe.timeout >= probe.interval
    ]


def _unwatched_databases(config: Config) -> list[Finding]:
    found = []
    for name, target in config.targets.items():
        if target.database is None:
            continue
        wanted = INTEGRITY_PROBE[target.database.kind]
        if not any(p.kind == wanted for p in _probes(target).values()):
            found.append(Finding(f"targets.{name}.database",
                                 f"no {wanted} probe watches this database: data_corruption "
                                 f"cannot be detected (add a probe with kind = \"{wanted}\")"))
    return found


def _unapproved_plans(config: Config) -> list[Finding]:
    # A restore or a session flush waits for `rollbackctl approve`; the mail asking for it goes
    # to the routed contacts (routing falls back to on-call, then to every tier-1 contact).
    if recipients(config.escalation, config.contacts, MailFacts("held", "data_corruption")):
        return []
    return [
        Finding(f"targets.{name}.{part}",
                "a destructive plan (restore, session flush) may wait for `rollbackctl approve`, "
                "but no contact is mailed to approve it: add a [contacts.<role>] with tier = 1")
        for name, target in config.targets.items()
        for part in ("database", "redis") if getattr(target, part) is not None
    ]


def _emergency_contact(config: Config) -> list[Finding]:
    role = config.escalation.roles.emergency
    if role in config.contacts:
        return []
    return [Finding("contacts", f"no [contacts.{role}] (the emergency role): an open breaker, "
                                "a key disaster or a failed rollback reaches only the usual roles")]


def config_warnings(config: Config) -> list[Finding]:
    """Everything doubtful about a valid config, in a stable order."""
    return [*_duplicate_addresses(config), *_probe_timeouts(config), *_unwatched_databases(config),
            *_unapproved_plans(config), *_emergency_contact(config)]

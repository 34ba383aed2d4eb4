"""Probe kinds by name: the one map the config and the scheduler look kinds up in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probes.base import Probe, ProbeSettings
from probes.http_health import HttpHealthProbe, HttpHealthSettings

# kind -> (settings model, factory)
PROBE_KINDS: dict[str, tuple[type[ProbeSettings], Callable[[str, Any], Probe]]] = {
    "http_health": (HttpHealthSettings, HttpHealthProbe),
}


def build_probe(name: str, settings: ProbeSettings) -> Probe:
    _, factory = PROBE_KINDS[settings.kind]
    return factory(name, settings)

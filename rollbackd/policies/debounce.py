"""Debouncing: consecutive-failure and -success thresholds turn raw observations into health."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from rollbackd.probes.observation import Observation, Status, Symptom


@dataclass(frozen=True)
class ProbeHealth:
    failing: bool = False
    passing: bool = False
    """Confirmed healthy (success threshold met); False until a probe has proven itself."""
    failures: int = 0
    successes: int = 0
    onset: datetime | None = None
    """First failure of the streak that made the probe failing: the incident's onset."""
    symptom: Symptom | None = None
    last: Observation | None = None


def debounce(
    health: ProbeHealth, obs: Observation, failure_threshold: int, success_threshold: int
) -> ProbeHealth:
    if obs.status is Status.ERROR:
        # A crashed probe says nothing about the target: keep the verdict, record the error.
        return replace(health, last=obs)
    if obs.ok:
        successes = health.successes + 1
        recovered = successes >= success_threshold
        return ProbeHealth(
            failing=health.failing and not recovered,
            passing=recovered,
            failures=0,
            successes=successes,
            onset=None if recovered else health.onset,
            symptom=None if recovered else health.symptom,
            last=obs,
        )
    failures = health.failures + 1
    # A success below the threshold does not end an outage: its onset stays.
    onset = health.onset if (health.failures or health.failing) and health.onset else obs.at
    failing = health.failing or failures >= failure_threshold
    return ProbeHealth(
        failing=failing,
        passing=False,
        failures=failures,
        successes=0,
        onset=onset,
        symptom=obs.symptom,
        last=obs,
    )

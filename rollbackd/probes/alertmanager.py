"""alertmanager: a passive probe that fails while a matching Alertmanager alert fires.

The daemon's webhook receiver hands it each alert it is sent (`receive`); the scheduler runs
`check` like any other probe's, so thresholds, classification and limits apply the same.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rollbackd.probes.base import BaseProbe, PositiveDuration, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom


class AlertmanagerSettings(ProbeSettings):
    kind: Literal["alertmanager"] = "alertmanager"
    match: dict[str, str] = {}
    """Label -> value an alert must carry to count for this probe, e.g. {alertname = "..."}."""
    match_re: dict[str, str] = {}
    """Label -> regular expression its value must match in full (as Alertmanager's =~)."""
    symptom: Symptom = Symptom.SLOW
    """What a firing alert means to the decision tree: slow, server_error, unreachable, ..."""
    failure_threshold: int = Field(default=1, ge=1)
    """One run is enough by default: the alert rule's own `for:` has already debounced it."""
    forget_after: PositiveDuration = 5 * 3600.0
    """A firing alert Alertmanager has not repeated for this long is forgotten (keep it above the
    route's repeat_interval, 4h by default), so a lost `resolved` cannot fail the probe forever."""

    @field_validator("match_re")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for label, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"match_re.{label}: not a regular expression: {exc}") from None
        return v

    @field_validator("symptom")
    @classmethod
    def _evidence(cls, v: Symptom) -> Symptom:
        if v is Symptom.PROBE_ERROR:
            raise ValueError("probe_error is not evidence about a target; pick another symptom")
        return v

    @model_validator(mode="after")
    def _some_matcher(self) -> AlertmanagerSettings:
        if not self.match and not self.match_re:
            raise ValueError("give match or match_re: which alerts count for this probe")
        return self


@dataclass(frozen=True)
class AlertSignal:
    """One alert as Alertmanager reported it, reduced to what the probe needs."""

    fingerprint: str
    firing: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None

    @property
    def name(self) -> str:
        return self.labels.get("alertname", self.fingerprint)


class AlertmanagerProbe(BaseProbe[AlertmanagerSettings]):
    kind: ClassVar[str] = "alertmanager"

    def __init__(self, name: str, settings: AlertmanagerSettings) -> None:
        super().__init__(name, settings)
        self._patterns = {k: re.compile(v) for k, v in settings.match_re.items()}
        self._firing: dict[str, tuple[AlertSignal, float]] = {}
        """fingerprint -> (the alert, monotonic time it was last reported firing)."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.settings.match.items())
                and all(p.fullmatch(labels.get(k, "")) for k, p in self._patterns.items()))

    def receive(self, alert: AlertSignal, seen: float | None = None) -> None:
        """Take one alert; `seen` (monotonic) is when it was reported, if not just now."""
        if alert.firing:
            self._firing[alert.fingerprint] = (alert, time.monotonic() if seen is None else seen)
        else:
            self._firing.pop(alert.fingerprint, None)

    @property
    def firing(self) -> list[AlertSignal]:
        return [a for a, _ in self._firing.values()]

    async def run(self, started: float) -> Observation:
        cutoff = started - self.settings.forget_after
        for fp, (_, seen) in list(self._firing.items()):
            if seen < cutoff:
                del self._firing[fp]
        firing = sorted(self.firing, key=lambda a: (a.name, a.fingerprint))
        metrics = {"alerts_firing": float(len(firing))}
        if not firing:
            return self.ok("no matching alert is firing.", started, None, metrics)
        first = firing[0]
        since = f" since {first.starts_at:%Y-%m-%d %H:%M:%S} UTC" if first.starts_at else ""
        summary = first.annotations.get("summary") or first.annotations.get("description", "")
        detail = f"alert {first.name} firing{since}" + (f": {summary[:200]}" if summary else "")
        if len(firing) > 1:
            detail += f" (and {len(firing) - 1} more: " + ", ".join(
                sorted({a.name for a in firing[1:]})[:5]) + ")"
        return self.fail(detail + ".", started, self.settings.symptom, None, metrics)

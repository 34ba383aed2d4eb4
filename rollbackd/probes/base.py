"""The one probe shape: settings every kind shares, and a base that never lets a check raise."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Generic, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from rollbackd.probes.observation import Observation, Status, Symptom


def parse_duration(value: object) -> float:
    """Seconds from 30, 1.5, "250ms", "30s", "5m", "1h", "1d" or "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s'")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"bad duration {value!r}: must be a finite number of seconds")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a duration such as '30s', '5m' or a number of seconds")
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    bad = f"bad duration {value!r}: use forms like '500ms', '30s', '5m', '1h'"
    text, total, number = value.strip().lower(), 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(bad)
        total += _number(number, bad) * units[unit]
        number = ""
        i += len(unit)
    if number:  # a trailing bare number means seconds
        total += _number(number, bad)
    if not math.isfinite(total):
        raise ValueError(bad)
    return total


def _number(text: str, bad: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(bad) from None


# The input type is what the JSON Schema shows: seconds, or a string such as "30s".
_parse_duration = BeforeValidator(parse_duration, json_schema_input_type=float | str)
Duration = Annotated[float, _parse_duration]
PositiveDuration = Annotated[float, _parse_duration, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A share from 0 to 1, such as the largest allowed drop of a count."""


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} must be an absolute path")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
"""A file a probe names: absolute, since the daemon's working directory is nobody's business."""


class ProbeSettings(BaseModel):
    """Settings every probe kind has; each kind subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: str
    interval: PositiveDuration = 10.0
    """Seconds between two runs of this probe."""
    timeout: PositiveDuration = 5.0
    """The scheduler cancels a run that takes longer and records a timeout."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures before the probe counts as failing (as in Kubernetes probes)."""
    success_threshold: int = Field(default=1, ge=1)
    """Consecutive successes before a failing probe counts as passing again."""


class Probe(Protocol):
    kind: ClassVar[str]
    name: str

    async def check(self) -> Observation: ...


S = TypeVar("S", bound=ProbeSettings)


class BaseProbe(Generic[S]):
    """What every probe kind shares: its name and settings, building its observations, and the
    catch-all that turns a crash into a probe error (a probe never raises).

    A kind implements `run(started)`; `started` is the monotonic time the check began, which
    every observation's duration is measured from.
    """

    kind: ClassVar[str]
    crash_message: ClassVar[bool] = True
    """Whether a crash's detail may quote the exception's message (not when it could quote what
    the probe was parsing, such as a key)."""

    def __init__(self, name: str, settings: S) -> None:
        self.name = name
        self.settings = settings

    async def check(self) -> Observation:
        started = time.monotonic()
        try:
            return await self.run(started)
        except Exception as exc:  # a probe never raises: a crash is a probe error
            return self.crashed(exc, started)

    async def run(self, started: float) -> Observation:
        raise NotImplementedError

    def observe(self, status: Status, detail: str, started: float,
                symptom: Symptom | None = None, version: str | None = None,
                metrics: Mapping[str, float] | None = None) -> Observation:
        return Observation(probe=self.name, kind=self.kind, status=status, detail=detail,
                           duration=time.monotonic() - started, symptom=symptom, version=version,
                           metrics=metrics or {})

    def ok(self, detail: str, started: float, version: str | None = None,
           metrics: Mapping[str, float] | None = None) -> Observation:
        return self.observe(Status.OK, detail, started, None, version, metrics)

    def fail(self, detail: str, started: float, symptom: Symptom, version: str | None = None,
             metrics: Mapping[str, float] | None = None) -> Observation:
        """The probe ran and the target is unhealthy."""
        return self.observe(Status.FAIL, detail, started, symptom, version, metrics)

    def error(self, detail: str, started: float) -> Observation:
        """The probe itself could not tell: not evidence about the target."""
        return self.observe(Status.ERROR, detail, started, Symptom.PROBE_ERROR)

    def crashed(self, exc: Exception, started: float) -> Observation:
        said = f": {exc}" if self.crash_message else "."
        return self.error(f"probe error: {type(exc).__name__}{said}", started)

    def redacted(self, obs: Observation, secret: str | None) -> Observation:
        """`obs` with `secret` replaced: no library message may carry a password out."""
        if not secret or secret not in obs.detail:
            return obs
        return Observation(obs.probe, obs.kind, obs.status, obs.detail.replace(secret, "<password>"),
                           obs.duration, obs.symptom, obs.version, obs.metrics, obs.at)

"""The probe protocol and the settings every probe kind shares."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from probes.observation import Observation


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

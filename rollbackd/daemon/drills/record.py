"""What a drill records: each scenario's timings and checks, and the run around them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

PHASES = ("detected", "rollback_started", "rolled_back", "verified")
"""Seconds from the onset (the injection) to each: the drill's timings, in order."""
RUNNING, PASSED, FAILED, REFUSED, INTERRUPTED = "running", "passed", "failed", "refused", \
    "interrupted"


def now_utc() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="milliseconds") if at else None


def _dt(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


@dataclass
class ScenarioRun:
    scenario: str
    result: str = "pending"
    reason: str = ""
    """Why it failed or was refused; empty when it passed."""
    injected: str = ""
    """What the injector did."""
    incident: int | None = None
    detected_as: str | None = None
    onset: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """PHASES, "injected" (the injector returned: the fault is in place) and "approved" (the
    drill approved a waiting plan) -> seconds after onset."""
    backups: list[str] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    differences: list[str] = field(default_factory=list)
    cleanup: str = ""

    @property
    def passed(self) -> bool:
        return self.result == PASSED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["onset"] = _iso(self.onset)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScenarioRun:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["onset"] = _dt(d.get("onset"))
        return cls(**known)


@dataclass
class DrillRun:
    id: int
    target: str
    trigger: str
    """Who asked: "rollbackctl (uid 0)", "schedule", "demo"."""
    scenarios: list[ScenarioRun]
    started_at: datetime = field(default_factory=now_utc)
    finished_at: datetime | None = None
    state: str = RUNNING
    report: str | None = None

    def finish(self, interrupted: bool = False) -> None:
        self.finished_at = now_utc()
        results = {s.result for s in self.scenarios}
        if interrupted:
            self.state = INTERRUPTED
        elif results == {PASSED}:
            self.state = PASSED
        elif results <= {REFUSED, "pending"}:
            self.state = REFUSED
        else:
            self.state = FAILED

    @property
    def done(self) -> bool:
        return self.state != RUNNING

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "trigger": self.trigger,
                "state": self.state, "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "report": self.report,
                "scenarios": [s.to_dict() for s in self.scenarios]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DrillRun:
        return cls(int(d["id"]), d["target"], d.get("trigger", ""),
                   [ScenarioRun.from_dict(s) for s in d.get("scenarios", [])],
                   _dt(d.get("started_at")) or now_utc(), _dt(d.get("finished_at")),
                   d.get("state", FAILED), d.get("report"))

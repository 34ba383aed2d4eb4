"""Plans: the checklist, the backend's rollback steps and the verification, as ordered steps."""

from __future__ import annotations

from dataclasses import dataclass

from policies.classify import IncidentClass


@dataclass(frozen=True)
class StepSpec:
    name: str
    idempotent: bool
    """Safe to run again after an interruption; otherwise an interrupted run waits for a person."""
    timeout: float = 60.0
    destructive: bool = False


# The runbook's pre-rollback checklist, in order. Evidence and the backup come before any change.
CHECKLIST: tuple[StepSpec, ...] = (
    StepSpec("capture_evidence", idempotent=True, timeout=30),
    StepSpec("notify", idempotent=True, timeout=10),
    StepSpec("backup_current", idempotent=True, timeout=300),
    StepSpec("record_incident", idempotent=True, timeout=10),
    StepSpec("verify_target", idempotent=True, timeout=30),
)
VERIFICATION: tuple[StepSpec, ...] = (StepSpec("verify", idempotent=True, timeout=600),)


@dataclass(frozen=True)
class Plan:
    kind: str
    incident_class: IncidentClass
    current_version: str | None
    target_version: str
    steps: tuple[StepSpec, ...]

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]


def deployment_rollback(
    incident_class: IncidentClass,
    current_version: str | None,
    target_version: str,
    backend_steps: tuple[StepSpec, ...],
    verify_timeout: float,
) -> Plan:
    verify = tuple(StepSpec(s.name, s.idempotent, verify_timeout + 5) for s in VERIFICATION)
    return Plan(
        kind="deployment_rollback",
        incident_class=incident_class,
        current_version=current_version,
        target_version=target_version,
        steps=CHECKLIST + backend_steps + verify,
    )

"""The runner: executes a plan step by step, journaling each step before and after it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.escalation.outbox import Outbox
from daemon.journal.store import Journal, now_utc
from daemon.metrics import Metrics
from daemon.report import write_report
from daemon.rollback.base import Executor, StepContext, StepFailed
from policies.breaker import record_failure, record_success
from policies.plans import CHECKLIST, Plan, StepSpec
from policies.settings import PolicySettings

log = logging.getLogger("rollbackd.runner")

Verifier = Callable[[float], Awaitable[tuple[bool, str]]]
EvidenceSource = Callable[[], dict[str, Any]]


@dataclass
class Runner:
    target: str
    journal: Journal
    executor: Executor
    outbox: Outbox
    metrics: Metrics
    policy: PolicySettings
    verify: Verifier
    probe_evidence: EvidenceSource
    reports_dir: Path
    fault_hook: Callable[[str], None] | None = None
    """Test-only: called with each step's name right after it is journaled as running."""

    async def execute(self, incident_id: int, plan: Plan) -> bool:
        ctx = StepContext(incident_id, self.target, plan)
        backend = {s.name for s in self.executor.steps}
        first_backend = next((s.name for s in plan.steps if s.name in backend), None)
        last_backend = next((s.name for s in reversed(plan.steps) if s.name in backend), None)
        self.journal.update_incident(
            incident_id, state="remediating", plan_kind=plan.kind,
            from_version=plan.current_version, to_version=plan.target_version,
        )
        for seq, spec in enumerate(plan.steps):
            if spec.name == first_backend:
                self.journal.update_incident(incident_id, "started", f"rollback to "
                                             f"{plan.target_version[:12]} started",
                                             started_at=now_utc())
            if spec.name == "verify":
                self.journal.update_incident(incident_id, state="verifying")
            ok, detail = await self._run_step(seq, spec, ctx)
            if not ok:
                await self._failed(incident_id, plan, f"step {spec.name} failed: {detail}")
                return False
            if spec.name == last_backend:
                self.journal.update_incident(incident_id, "rolled_back", detail,
                                             rolled_back_at=now_utc())
        await self._resolved(incident_id, plan)
        return True

    async def _run_step(self, seq: int, spec: StepSpec, ctx: StepContext) -> tuple[bool, str]:
        step_id = self.journal.step_started(ctx.incident_id, seq, spec.name, spec.idempotent)
        if self.fault_hook:
            self.fault_hook(spec.name)
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(self._dispatch(spec.name, ctx), spec.timeout)
            ok = True
        except StepFailed as exc:
            ok, detail = False, str(exc)
        except TimeoutError:
            ok, detail = False, f"timed out after {spec.timeout:g}s"
        except asyncio.CancelledError:
            # Shut down mid-step: what the step did is unknown, so it is not `done` or `failed`.
            self.journal.step_interrupted(step_id, "daemon stopped while the step ran")
            raise
        except Exception as exc:  # an executor bug must not kill the daemon
            log.exception("target=%s step=%s status=crashed", self.target, spec.name)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        self.journal.step_finished(step_id, ok, duration, detail)
        log.info("target=%s incident=%d step=%s status=%s duration=%.2fs detail=%r",
                 self.target, ctx.incident_id, spec.name, "done" if ok else "failed",
                 duration, detail)
        return ok, detail

    async def _dispatch(self, name: str, ctx: StepContext) -> str:
        handler = {
            "capture_evidence": self._capture_evidence,
            "notify": self._notify,
            "backup_current": self._backup_current,
            "record_incident": self._record_incident,
            "verify_target": self._verify_target,
            "verify": self._verify,
        }.get(name)
        if handler is not None:
            return await handler(ctx)
        return await self.executor.run_step(name, ctx)

    async def _capture_evidence(self, ctx: StepContext) -> str:
        evidence = {"probes": self.probe_evidence(), "deployment": await self.executor.evidence()}
        self.journal.set_evidence(ctx.incident_id, evidence)
        return f"current version {evidence['deployment'].get('commit') or '?'}"

    async def _notify(self, ctx: StepContext) -> str:
        inc = self.journal.incident(ctx.incident_id)
        assert inc is not None
        steps = ", ".join(s.name for s in ctx.plan.steps if s not in CHECKLIST)
        body = (f"{inc.reason}\n\nTarget: {self.target}\nIncident: {inc.id}\n"
                f"Detected: {inc.detected_at:%Y-%m-%d %H:%M:%S} UTC\n"
                f"Plan ({ctx.plan.kind}): {steps}\n\nrollbackd is rolling back now; "
                f"`rollbackctl show {inc.id}` follows it.\n")
        self.outbox.enqueue(inc.id, "opened",
                            f"[rollbackd] {self.target}: {inc.incident_class}, rolling back", body)
        return f"{len(self.outbox.recipients())} recipients queued"

    async def _backup_current(self, ctx: StepContext) -> str:
        # A deployment's current state is its commit, which git keeps; databases add copies later.
        return f"current deployment {ctx.plan.current_version or '?'} is kept in the repository"

    async def _record_incident(self, ctx: StepContext) -> str:
        return f"report at {write_report(self.journal, self.reports_dir, ctx.incident_id)}"

    async def _verify_target(self, ctx: StepContext) -> str:
        version = ctx.plan.target_version
        if not await self.executor.version_exists(version):
            raise StepFailed(f"rollback target {version[:12]} no longer exists")
        entry = next((e for e in self.journal.ledger(self.target) if e.version == version), None)
        if entry is None or not entry.known_good:
            raise StepFailed(f"rollback target {version[:12]} is not known-good in the ledger")
        return f"{version[:12]} exists and is known-good since {entry.known_good_at:%H:%M:%S}"

    async def _verify(self, ctx: StepContext) -> str:
        ok, detail = await self.verify(self.policy.verify_timeout)
        if not ok:
            raise StepFailed(detail)
        return detail

    async def _resolved(self, incident_id: int, plan: Plan) -> None:
        now = now_utc()
        self.journal.update_incident(incident_id, "verified", "all probes pass",
                                     state="resolved", verified_at=now, closed_at=now)
        if plan.current_version:
            self.journal.mark_bad(self.target, plan.current_version,
                                  f"rolled back by incident {incident_id}")
        breaker = self.journal.breaker(self.target, plan.kind)
        self.journal.save_breaker(self.target, plan.kind,
                                  record_success(breaker, now, self.policy.breaker_reset))
        self.metrics.rollbacks.labels(self.target, plan.incident_class, self.executor.backend,
                                      "success").inc()
        write_report(self.journal, self.reports_dir, incident_id)
        inc = self.journal.incident(incident_id)
        assert inc is not None
        body = (f"{self.target} is healthy again on {plan.target_version[:12]}.\n\n"
                f"Detected {inc.detected_at:%H:%M:%S}, rollback started "
                f"{inc.started_at:%H:%M:%S}, verified {now:%H:%M:%S} UTC.\n"
                f"{plan.current_version and plan.current_version[:12]} is marked bad.\n")
        self.outbox.enqueue(incident_id, "resolved",
                            f"[rollbackd] {self.target}: resolved by rollback", body)

    async def _failed(self, incident_id: int, plan: Plan, why: str) -> None:
        breaker = self.journal.breaker(self.target, plan.kind)
        breaker = record_failure(breaker, now_utc(), self.policy.breaker_failures,
                                 self.policy.window, self.policy.breaker_reset)
        self.journal.save_breaker(self.target, plan.kind, breaker)
        self.journal.update_incident(incident_id, "escalated", why, state="escalated")
        self.metrics.rollbacks.labels(self.target, plan.incident_class, self.executor.backend,
                                      "failure").inc()
        write_report(self.journal, self.reports_dir, incident_id)
        body = (f"The automatic rollback of {self.target} failed: {why}.\n"
                f"Circuit breaker: {breaker.mode}. A person must take over.\n"
                f"`rollbackctl show {incident_id} --report` has the steps and evidence.\n")
        self.outbox.enqueue(incident_id, "failed",
                            f"[rollbackd] {self.target}: ROLLBACK FAILED, escalating", body)

"""The runner: executes a plan step by step, journaling each step before and after it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.metrics.instruments import Trigger
from rollbackd.daemon.refusal import Refused
from rollbackd.daemon.report import write_report
from rollbackd.daemon.rollback.base import Executor, StepContext, StepFailed, StepHeld
from rollbackd.policies.breaker import record_failure, record_success
from rollbackd.policies.lifecycle import State
from rollbackd.policies.plans import Component, Plan, PlanKind, StepSpec
from rollbackd.policies.settings import PolicySettings

log = logging.getLogger("rollbackd.runner")

Verifier = Callable[[float], Awaitable[tuple[bool, str]]]
EvidenceSource = Callable[[], dict[str, Any]]
RUNNER_COMPONENTS = (Component.CHECKLIST, Component.VERIFY)


def evidence_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between the evidence at detection and at execution, one phrase each."""
    changes = []
    for probe, seen in after.get("probes", {}).items():
        was = before.get("probes", {}).get(probe, {})
        if was.get("status") != seen.get("status"):
            changes.append(f"probe {probe}: {was.get('status', 'not run')} -> {seen.get('status')}")
    for component, now in after.items():
        then = before.get(component)
        if component == "probes" or not isinstance(now, dict) or not isinstance(then, dict):
            continue
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key) and not isinstance(now.get(key), list | dict):
                changes.append(f"{component} {key}: {then.get(key)} -> {now.get(key)}")
    return changes


@dataclass
class Runner:
    target: str
    journal: Journal
    components: Mapping[Component, Executor]
    outbox: Outbox
    metrics: Metrics
    policy: PolicySettings
    verify: Verifier
    probe_evidence: EvidenceSource
    reports_dir: Path
    fault_hook: Callable[[str, str], None] | None = None
    """Test-only: called with each step's name and "running" right after it is journaled
    running, and with "effect" right after it did its work, before it is journaled done; and
    with the incident's end ("resolved", "held", "failed") and "close" right after that end is
    written, before it commits with its mail."""
    guard: Callable[[], bool] | None = None
    """Several instances (rollbackd/daemon/cluster): True while this one owns the target. A step starts,
    and its outcome is journaled, only while it holds; once it fails nothing more is written."""

    def _owner(self) -> bool:
        return self.guard is None or self.guard()

    def _still_owner(self) -> None:
        if not self._owner():  # the next owner finds the step `running` and holds the incident
            log.warning("target=%s status=stopped reason=ownership lost", self.target)
            raise asyncio.CancelledError("ownership of the target was lost")

    def involved(self, plan: Plan) -> list[Executor]:
        seen = dict.fromkeys(s.component for s in plan.steps if s.component in self.components)
        return [self.components[c] for c in seen]

    @property
    def backend(self) -> str:
        dep = self.components.get(Component.DEPLOYMENT)
        return dep.backend if dep else "none"

    def context(self, incident_id: int, plan: Plan) -> StepContext:
        return StepContext(incident_id, self.target, plan, self.reports_dir.parent / "receipts")

    async def execute(self, incident_id: int, plan: Plan) -> bool:
        ctx = self.context(incident_id, plan)
        # The users' notice (Component.USERS) comes after the plan's check: it is no part of
        # the rollback itself, so it neither starts nor ends it.
        body = [s for s in plan.steps if s.component not in (*RUNNER_COMPONENTS, Component.USERS)]
        first, last = (body[0].name, body[-1].name) if body else (None, None)
        # Verification starts with the probes' step, or, in a plan that checks its own work
        # (the lockdown), with its last step before the notice.
        checked = [s for s in plan.steps if s.component is not Component.USERS] or plan.steps
        checks = next((s.name for s in plan.steps if s.component is Component.VERIFY),
                      checked[-1].name)
        # Resumed by recovery with every step found done, the incident may be verifying already.
        state = {} if self._state(incident_id) == State.VERIFYING else {
            "state": State.REMEDIATING.value}
        self.journal.incidents.update(
            incident_id, plan_kind=plan.kind.value, from_version=plan.current_version,
            to_version=plan.target_version or None, **state,
        )
        done = {s.name for s in self.journal.steps.of(incident_id) if s.state == "done"}
        for seq, spec in enumerate(plan.steps):
            if spec.name in done:
                continue  # resumed by a person after a hold: what completed stays done
            if spec.name == first:
                self.journal.incidents.update(incident_id, "started", f"{plan.kind} started",
                                              started_at=now_utc())
            if spec.name == checks or (seq > plan.step_names.index(checks)
                                       and self._state(incident_id) != State.VERIFYING):
                # Resumed past a check done before the hold (the users' notice): verifying.
                self.journal.incidents.update(incident_id, state=State.VERIFYING.value)
            ok, detail, held = await self._run_step(seq, spec, ctx)
            if held:
                self._held(incident_id, detail)
                return False
            if not ok:
                await self._failed(incident_id, plan, f"step {spec.name} failed: {detail}")
                return False
            if spec.name == last:
                self.journal.incidents.update(incident_id, "rolled_back", detail,
                                              rolled_back_at=now_utc())
        if self._state(incident_id) != State.VERIFYING:
            # Resumed with every step found done (the users' notice, after the plan's check).
            self.journal.incidents.update(incident_id, state=State.VERIFYING.value)
        await self._resolved(incident_id, plan)
        return True

    def _state(self, incident_id: int) -> str | None:
        inc = self.journal.incidents.get(incident_id)
        return inc.state if inc is not None else None

    async def _run_step(self, seq: int, spec: StepSpec,
                        ctx: StepContext) -> tuple[bool, str, bool]:
        """(done, detail, held: a person must decide before it can run)."""
        self._still_owner()
        step_id = self.journal.steps.started(ctx.incident_id, seq, spec.name, spec.idempotent)
        if self.fault_hook:
            self.fault_hook(spec.name, "running")
        started, held = time.monotonic(), False
        try:
            detail = await asyncio.wait_for(self._dispatch(spec, ctx), spec.timeout)
            ok = True
        except StepHeld as exc:
            ok, detail, held = False, str(exc), True
        except (StepFailed, Refused) as exc:
            ok, detail = False, str(exc)
        except TimeoutError:
            ok, detail = False, f"timed out after {spec.timeout:g}s"
        except asyncio.CancelledError:
            # Shut down mid-step: what the step did is unknown, so it is not `done` or `failed`.
            if self._owner():
                self.journal.steps.interrupted(step_id, "daemon stopped while the step ran")
            raise
        except Exception as exc:  # an executor bug must not kill the daemon
            log.exception("target=%s step=%s status=crashed", self.target, spec.name)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        if self.fault_hook and ok:
            self.fault_hook(spec.name, "effect")
        self._still_owner()
        self.journal.steps.finished(step_id, ok, duration, detail)
        if self.fault_hook and ok:
            self.fault_hook(spec.name, "done")
        log.info("target=%s incident=%d step=%s status=%s duration=%.2fs detail=%r",
                 self.target, ctx.incident_id, spec.name, "done" if ok else "failed",
                 duration, detail)
        return ok, detail, held

    async def _dispatch(self, spec: StepSpec, ctx: StepContext) -> str:
        if spec.component is Component.VERIFY:
            return await self._verify(ctx)
        if spec.component is Component.CHECKLIST:
            handler = {
                "capture_evidence": self._capture_evidence,
                "notify": self._notify,
                "backup_current": self._backup_current,
                "record_incident": self._record_incident,
                "verify_target": self._verify_target,
            }[spec.name]
            return await handler(ctx)
        executor = self.components.get(spec.component)
        if executor is None:
            raise StepFailed(f"no {spec.component} executor is configured for {self.target}")
        return await executor.run_step(spec.name, ctx)

    async def _capture_evidence(self, ctx: StepContext) -> str:
        now: dict[str, Any] = {"probes": self.probe_evidence()}
        for executor in self.involved(ctx.plan):
            now[executor.component.value] = await executor.evidence()
        inc = self.journal.incidents.get(ctx.incident_id)
        found = dict(inc.evidence) if inc is not None else {}
        if "probes" not in found:  # nothing captured at detection (a person's rollback)
            evidence = {**found, **now}
            changed: list[str] = []
        else:
            # What was seen at detection stays; what the plan finds now is kept beside it, and
            # what differs is named (an approval can come hours later).
            changed = evidence_changes(found, now)
            evidence = {**found, "at_execution": now, "changed_since_detection": changed}
        self.journal.incidents.set_evidence(ctx.incident_id, evidence)
        return (f"evidence from {len(now) - 1} components and {len(now['probes'])} probes"
                + (f"; changed since detection: {'; '.join(changed)}" if changed else ""))

    async def _notify(self, ctx: StepContext) -> str:
        inc = self.journal.incidents.get(ctx.incident_id)
        assert inc is not None
        steps = [s.name for s in ctx.plan.steps if s.component not in RUNNER_COMPONENTS]
        to = self.outbox.send(notices.acting(self.target, inc, ctx.plan, steps,
                                             self.journal.mail.incident_mailed(inc.id)))
        return f"{len(to)} recipients queued"

    async def _backup_current(self, ctx: StepContext) -> str:
        details = [await e.backup_current(ctx) for e in self.involved(ctx.plan)]
        return "; ".join(details) or "nothing to back up"

    async def _record_incident(self, ctx: StepContext) -> str:
        return f"report at {write_report(self.journal, self.reports_dir, ctx.incident_id)}"

    async def _verify_target(self, ctx: StepContext) -> str:
        details = [await e.verify_target(ctx) for e in self.involved(ctx.plan)]
        version = ctx.plan.targets.get(Component.DEPLOYMENT)
        if version:
            entry = next((e for e in self.journal.ledger.entries(self.target) if e.version == version),
                         None)
            if entry is not None and entry.bad_at is not None:
                raise StepFailed(f"refused: rollback target {version[:12]} was marked bad at "
                                 f"{entry.bad_at:%H:%M:%S} UTC ({entry.bad_reason}) after the "
                                 "plan was made")
            if entry is None or not entry.known_good:
                raise StepFailed(f"rollback target {version[:12]} is not known-good in the ledger")
            details.append(f"{version[:12]} known-good since {entry.known_good_at:%H:%M:%S}")
        return "; ".join(details)

    async def _verify(self, ctx: StepContext) -> str:
        ok, detail = await self.verify(self.policy.verify_timeout)
        if not ok:
            raise StepFailed(detail)
        return detail

    async def _resolved(self, incident_id: int, plan: Plan) -> None:
        now = now_utc()
        # The incident's end, the ledger, the breaker and the mail commit together: a crash
        # before the commit leaves every step done and the incident open, and the restart
        # closes it (rollbackd/daemon/incidents/recovery.py) with the one mail.
        with self.journal.database.tx():
            self.journal.incidents.update(incident_id, "verified", "all probes pass"
                                          if plan.kind is not PlanKind.LOCKDOWN
                                          else "lockdown checked",
                                          state=State.RESOLVED.value, verified_at=now,
                                          closed_at=now)
            self._closing(State.RESOLVED)
            marked_bad = None
            if plan.current_version and Component.DEPLOYMENT in plan.targets:
                marked_bad = plan.current_version
                self.journal.ledger.mark_bad(self.target, marked_bad,
                                             f"rolled back by incident {incident_id}")
            breaker = self.journal.breakers.get(self.target, plan.kind)
            self.journal.breakers.save(self.target, plan.kind,
                                       record_success(breaker, now, self.policy.breaker_reset))
            inc = self.journal.incidents.get(incident_id)
            assert inc is not None
            steps = self.journal.steps.of(incident_id)
            if plan.kind is PlanKind.LOCKDOWN:
                details = [s.detail for s in steps
                           if s.state == "done" and s.name != "capture_evidence"]
                notice = notices.lockdown_done(self.target, incident_id, details)
            else:
                config = next((s.detail for s in steps
                               if s.name == "restore_config" and s.state == "done"), None)
                notice = notices.resolved(self.target, inc, plan, now, marked_bad, config)
            self.outbox.send(notice)
        self.metrics.rollback_finished(self.target, plan.incident_class, self.backend, "success",
                                       self._trigger(incident_id))
        if plan.kind is not PlanKind.LOCKDOWN:
            self.metrics.recovered(self.target, plan.incident_class,
                                   inc.onset_at or inc.detected_at)
        write_report(self.journal, self.reports_dir, incident_id)

    def _closing(self, end: State) -> None:
        """Test-only crash point: the incident's end is written, not yet committed."""
        if self.fault_hook:
            self.fault_hook(end.value, "close")

    def _trigger(self, incident_id: int) -> Trigger:
        # The desk journals a "drill" event on an incident opened while a drill breaks the
        # target; a person's rollback is not automatic.
        if any(event == "drill" for _, event, _ in self.journal.incidents.timeline(incident_id)):
            return "drill"
        extras = self.journal.incidents.extras(incident_id)
        return "auto" if extras is not None and extras.automatic else "manual"

    def _held(self, incident_id: int, why: str) -> None:
        """Nothing was changed and a person must decide: no failed remediation, no breaker."""
        with self.journal.database.tx():  # the hold and its mail, or neither (see _resolved)
            self.journal.incidents.update(incident_id, "held", why, state=State.HELD.value,
                                          held_reason=why)
            self._closing(State.HELD)
            inc = self.journal.incidents.get(incident_id)
            assert inc is not None
            self.outbox.send(notices.held(inc, self.journal.steps.of(incident_id)[-1]))
        write_report(self.journal, self.reports_dir, incident_id)

    async def _failed(self, incident_id: int, plan: Plan, why: str) -> None:
        with self.journal.database.tx():  # the failure, the breaker and the mail (see _resolved)
            breaker = self.journal.breakers.get(self.target, plan.kind)
            breaker = record_failure(breaker, now_utc(), self.policy.breaker_failures,
                                     self.policy.window, self.policy.breaker_reset)
            self.journal.breakers.save(self.target, plan.kind, breaker)
            self.journal.incidents.update(incident_id, "failed", why, state=State.FAILED.value)
            self.journal.incidents.update(incident_id, "escalated", "a person must take over",
                                          state=State.ESCALATED.value)
            self._closing(State.FAILED)
            self.outbox.send(notices.plan_failed(self.target, incident_id, plan, why,
                                                 breaker.mode))
        self.metrics.rollback_finished(self.target, plan.incident_class, self.backend, "failure",
                                       self._trigger(incident_id))
        write_report(self.journal, self.reports_dir, incident_id)

"""The incident desk of one target: the only code that opens, joins, approves, denies, takes
over, holds, resumes and closes its incidents, and the only caller of the runner.

Every change of an incident's state goes through `_move`, which checks it against the one
transition table (rollbackd.policies.lifecycle); the journal checks it again on write. The desk owns the
evaluation lock: an automatic start, an approval, a manual rollback and a drill's approval never
interleave between a check and the start it allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.incidents.changes import lines as change_lines
from rollbackd.daemon.journal import Incident, Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.refusal import Refused
from rollbackd.daemon.runner import Runner
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, Decision, Gate, History, decide
from rollbackd.policies.lifecycle import SELF_CLOSING, TRANSITIONS, State, check_transition
from rollbackd.policies.overrides import OverrideKind, active
from rollbackd.policies.plans import LOCKDOWN_CLASS, Plan, plan_from_dict, plan_to_dict
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts

log = logging.getLogger("rollbackd.incidents")

_STATE_OF = {Action.EXECUTE: State.OPEN, Action.DRY_RUN: State.DRY_RUN,
             Action.ESCALATE: State.ESCALATED, Action.AWAIT_APPROVAL: State.AWAITING_APPROVAL,
             Action.HOLD: State.HELD}
_SAYS = {Action.DRY_RUN: "would act (dry run)", Action.HOLD: "held for a person",
         Action.ESCALATE: "escalated", Action.AWAIT_APPROVAL: "waiting for approval"}
_TREE = frozenset(IncidentClass._value2member_map_)
"""Incident classes of the decision tree (a lockdown request is an operator's, not these)."""
CACHE_AGE = 5.0
"""Seconds the desk trusts its copy of the open incident when no change of its own was made
(every change the daemon makes goes through the desk; the age bounds anything else)."""


@dataclass(frozen=True)
class Picture:
    """What the target's probes say now, as the monitor has debounced it."""

    found: tuple[IncidentClass, list[str]] | None
    """The incident class and the probes that show it; None: nothing to act on."""
    passing: bool
    """Every probe passes (an open incident that can close by itself closes)."""
    version: str | None
    """The deployed version now (the ledger is up to date with it)."""


class TargetView(Protocol):
    """What the desk asks of the target's monitor."""

    name: str
    policy: PolicySettings

    async def picture(self) -> Picture: ...

    async def confirm(self) -> tuple[Picture, dict[str, str]]:
        """Every probe afresh: the picture after them and what each said."""
        ...

    def probe_evidence(self) -> dict[str, Any]: ...

    async def component_evidence(self) -> dict[str, Any]:
        """What each executor shows of the target now (version, revision, recent errors)."""
        ...

    async def what_changed(self, version: str | None) -> list[dict[str, str]]:
        """The suspects since the known-good release (bounded; never raises)."""
        ...

    def failing_detail(self, probes: list[str]) -> tuple[str, datetime | None]:
        """The evidence sentence for these probes, and the onset of the earliest of them."""
        ...

    async def facts(self, version: str | None, onset: datetime | None,
                    probes: list[str] | None = None) -> Facts: ...

    def history(self) -> History: ...

    async def current_version(self, max_age: float = 2.0) -> str | None: ...

    def forget_version(self) -> None: ...


class IncidentDesk:
    def __init__(self, view: TargetView, journal: Journal, outbox: Outbox, metrics: Metrics,
                 runner: Runner) -> None:
        self.view = view
        self.target = view.name
        self.journal = journal
        self.outbox = outbox
        self.metrics = metrics
        self.runner = runner
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[bool] | None = None
        self._cached: tuple[float, Incident | None] | None = None
        self._last_suppressed: str | None = None
        self.drill: int | None = None
        """The drill breaking this target on purpose now: incidents opened meanwhile are its."""

    # -- what the desk knows ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def current(self) -> Incident | None:
        """The target's open incident (at most one), from the desk's copy when it is fresh."""
        if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_AGE \
                and not self.busy:
            return self._cached[1]
        found = self.journal.incidents.open_for(self.target)
        self._cached = (time.monotonic(), found)
        return found

    def _changed(self) -> None:
        self._cached = None

    def incident(self, incident_id: int) -> Incident:
        inc = self.journal.incidents.get(incident_id)
        if inc is None or inc.target != self.target:
            raise Refused("not_found", f"no incident {incident_id} of {self.target}")
        return inc

    def stored_plan(self, incident_id: int) -> Plan | None:
        extras = self.journal.incidents.extras(incident_id)
        return plan_from_dict(extras.plan) if extras is not None and extras.plan else None

    def _move(self, inc: Incident, new: State, event: str | None = None, detail: str = "",
              **fields: Any) -> None:
        """The one way an incident's state changes: checked here, journaled, cache dropped."""
        check_transition(inc.state, new.value)
        self.journal.incidents.update(inc.id, event, detail, state=new.value, **fields)
        self._changed()

    # -- the automatic path: evaluate what the probes say --------------------------------------

    async def evaluate(self) -> None:
        async with self.lock:
            if self.busy:
                return
            await self._evaluate(await self.view.picture())

    async def _evaluate(self, pic: Picture) -> None:
        incident = self.current()
        if pic.found is None:
            if pic.passing and incident is not None and incident.state in SELF_CLOSING \
                    and incident.incident_class != LOCKDOWN_CLASS:
                self._close_recovered(incident)
            return
        if incident is not None:
            self._join(incident, pic.found[1])
            return  # one open incident per target; it already owns these symptoms
        incident_class, probes = pic.found
        evidence, onset = self.view.failing_detail(probes)
        decision = decide(incident_class, evidence,
                          await self.view.facts(pic.version, onset, probes),
                          self.view.history(), now_utc(), self.view.policy, self.target)
        said: dict[str, str] = {}
        if decision.action not in (Action.SUPPRESS, Action.IGNORE):
            # Nothing opens (and nothing runs) on a stale or partial picture: a probe with a
            # long interval may not have seen its dependency go down yet.
            confirmed = await self._confirm(decision)
            if confirmed is None:
                return
            decision, onset, pic, probes, said = confirmed
        if decision.action in (Action.SUPPRESS, Action.IGNORE):
            if self._last_suppressed != decision.reason:  # say it once, not every run
                self._last_suppressed = decision.reason
                log.info("target=%s action=%s reason=%r", self.target, decision.action,
                         decision.reason)
            return
        incident_id = await self._open(decision, onset, pic.version, probes, said)
        if decision.action is Action.EXECUTE and decision.plan:
            self._start(incident_id, decision.plan)

    async def _confirm(self, decision: Decision) -> tuple[
            Decision, datetime | None, Picture, list[str], dict[str, str]] | None:
        """No incident and no action on a stale or partial picture: every probe afresh, then the
        tree again, which may find another class (re-planned for it, said in the log). None:
        nothing stands any more (wait for the next evaluation)."""
        pic, said = await self.view.confirm()
        if pic.found is None:
            why = (f"{decision.incident_class} not confirmed by a fresh run of every probe "
                   "(nothing failing past its threshold now); nothing opened")
            if self._last_suppressed != why:  # say it once, not every run
                self._last_suppressed = why
                log.info("target=%s action=wait reason=%r", self.target, why)
            return None
        incident_class, probes = pic.found
        if incident_class != decision.incident_class:
            log.info("target=%s action=replan reason=%r", self.target,
                     f"{decision.incident_class} became {incident_class} on a fresh run of every "
                     "probe")
        evidence, onset = self.view.failing_detail(probes)
        again = decide(incident_class, evidence, await self.view.facts(pic.version, onset, probes),
                       self.view.history(), now_utc(), self.view.policy, self.target)
        return again, onset, pic, probes, said

    def _close_recovered(self, incident: Incident) -> None:
        acted = bool(self.journal.steps.of(incident.id))
        state = State.RESOLVED if acted else State.TRANSIENT
        self._move(incident, state, "recovered", "every probe passes again", closed_at=now_utc())
        self.metrics.recovered(self.target, incident.incident_class,
                               incident.onset_at or incident.detected_at)
        log.info("target=%s incident=%d status=%s", self.target, incident.id, state)

    def _join(self, incident: Incident, probes: list[str]) -> None:
        known = set(incident.evidence.get("failing", []))
        new = [p for p in probes if p not in known]
        if new:
            evidence = {**incident.evidence, "failing": sorted(known | set(new))}
            self.journal.incidents.set_evidence(incident.id, evidence)
            self.journal.incidents.add_event(incident.id, "joined",
                                             "new failing probes: " + ", ".join(new))
            self._changed()

    async def _open(self, decision: Decision, onset: datetime | None, version: str | None,
              probes: list[str], confirmed: dict[str, str]) -> int:
        state = _STATE_OF[decision.action]
        # Evidence at detection: what a person approving hours later must see as it was then.
        evidence = {"probes": self.view.probe_evidence(), "version": version,
                    "failing": sorted(probes), **await self.view.component_evidence()}
        evidence["changes"] = await self.view.what_changed(version)
        # The incident, its plan and its mail commit together: a crash cannot leave an incident
        # whose "opened" mail is never queued (the next evaluation joins it, and says nothing).
        with self.journal.database.tx():
            incident_id = self._opened(decision, onset, evidence, state, confirmed)
        self.metrics.incident_opened(self.target, decision.incident_class,
                                     "drill" if self.drill is not None else "auto")
        self.metrics.detected(self.target, decision.incident_class, onset)
        log.info("target=%s incident=%d class=%s action=%s reason=%r", self.target, incident_id,
                 decision.incident_class, decision.action, decision.reason)
        return incident_id

    def _opened(self, decision: Decision, onset: datetime | None, evidence: dict[str, Any],
                state: State, confirmed: dict[str, str]) -> int:
        incident_id = self.journal.incidents.open(
            self.target, decision.incident_class, decision.reason, onset, evidence,
            state=state.value)
        if confirmed:
            self.journal.incidents.add_event(incident_id, "confirmed", "every probe afresh: " + "; ".join(
                f"{p} {v}" for p, v in confirmed.items())[:2000])
        self._changed()
        if self.drill is not None:  # the runner reads this event for the rollback's trigger
            self.journal.incidents.add_event(incident_id, "drill", f"opened during drill {self.drill}")
        if decision.plan is not None:
            self.journal.incidents.update(incident_id, "planned", ", ".join(
                decision.plan.step_names), plan=json.dumps(plan_to_dict(decision.plan)))
        if decision.action is Action.EXECUTE and decision.plan:
            return incident_id  # the plan's own notify step tells people
        if self._silenced():
            self.journal.incidents.add_event(incident_id, "silenced", "no mail: silenced by an operator")
            return incident_id
        limited = decision.gate in (Gate.RATE_LIMIT, Gate.BREAKER_OPEN)
        self.outbox.send(notices.decided(
            self.target, incident_id, decision, _SAYS.get(decision.action, str(decision.action)),
            approval=decision.action is Action.AWAIT_APPROVAL,
            history=self._rollback_history() if limited else (),
            changes=change_lines(evidence)))
        return incident_id

    def _rollback_history(self, most: int = 10) -> list[str]:
        """The target's recent rollbacks, newest first, one line each (what a limit refused)."""
        lines = []
        for inc in self.journal.incidents.recent(200):
            if inc.target != self.target or inc.started_at is None:
                continue
            moved = f"{(inc.from_version or '?')[:12]} -> {(inc.to_version or '?')[:12]}"
            lines.append(f"{inc.started_at:%Y-%m-%d %H:%M:%S} UTC, incident {inc.id} "
                         f"({inc.incident_class}): {moved}, {inc.state}")
            if len(lines) == most:
                break
        return lines

    def _silenced(self) -> bool:
        return active(self.journal.overrides.active(), self.target, now_utc(),
                      OverrideKind.SILENCE) is not None

    # -- a person's decisions ------------------------------------------------------------------

    async def approve(self, incident_id: int, by: str, uid: int | None = None) -> Plan:
        """Run the plan of an incident that waits for approval, or resume a held one. `uid`:
        the person's (None: not a person, such as a drill)."""
        async with self.lock:  # no automatic start between our check and ours
            inc = self.incident(incident_id)
            if inc.state not in (State.AWAITING_APPROVAL, State.HELD):
                raise Refused("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                              "approval")
            plan = self.stored_plan(inc.id)
            if plan is None:
                raise Refused("no_plan", f"incident {inc.id} has no plan to run; act by hand")
            if self.busy:
                raise Refused("busy", f"{self.target} is already running a plan")
            self._second_person(inc, plan, uid)
            if inc.state == State.AWAITING_APPROVAL and inc.incident_class in _TREE:
                await self._confirm_approval(inc)
            self.journal.incidents.add_event(inc.id, "approved", f"approved by {by}")
            self._start(inc.id, plan)
            return plan

    def _second_person(self, inc: Incident, plan: Plan, uid: int | None) -> None:
        """With `two_person`, an irreversible plan needs two different uids: its requester (a
        lockdown's) or a first approver, and this one. A first approval is journaled."""
        policy = self.view.policy
        if not (policy.two_person and plan.kind.value in policy.two_person_plans):
            return
        if uid is None:
            raise Refused("two_person", f"incident {inc.id}: {plan.kind} needs two people's "
                          "approval; only a person (rollbackctl approve) can give it")
        asked = {int(e.removeprefix("uid ")) for _, event, e in self.journal.incidents.timeline(inc.id)
                 if event == "approval_1" and e.removeprefix("uid ").isdigit()}
        requester = inc.evidence.get("requested_by", {}).get("uid")
        if isinstance(requester, int):
            asked.add(requester)
        if asked - {uid}:
            return
        if not asked:
            self.journal.incidents.add_event(inc.id, "approval_1", f"uid {uid}")
            raise Refused("second_approval_needed", f"incident {inc.id}: approval by uid {uid} "
                          f"recorded; {plan.kind} needs a second person (another uid) to "
                          f"approve it too (policy two_person)")
        raise Refused("two_person", f"incident {inc.id}: uid {uid} already asked for this "
                      f"{plan.kind}; a different person (another uid) must approve it "
                      "(policy two_person)")

    async def _confirm_approval(self, inc: Incident) -> None:
        """Approved maybe hours later: the plan runs only if its class still stands now."""
        pic, said = await self.view.confirm()
        seen = "; ".join(f"{p} {v}" for p, v in said.items())[:2000]
        if pic.found is not None and pic.found[0] == inc.incident_class:
            self.journal.incidents.add_event(inc.id, "confirmed", f"every probe afresh: {seen}")
            return
        if pic.found is None and pic.passing:
            self._move(inc, State.TRANSIENT, "recovered", "every probe passes again; the "
                       f"approved plan was not run ({seen})", closed_at=now_utc())
            raise Refused("not_confirmed", f"incident {inc.id}: every probe passes now, so the "
                          "plan was not run; the incident is closed")
        now = pic.found[0] if pic.found else "no class yet (probes still settling)"
        self.journal.incidents.add_event(inc.id, "not_confirmed", f"now {now}: {seen}")
        raise Refused("not_confirmed", f"incident {inc.id} is {inc.incident_class} but a fresh "
                      f"run of every probe shows {now}: the plan was not run (approve again "
                      "once it settles, or deny it)")

    def deny(self, incident_id: int, by: str) -> State:
        """Refuse a waiting plan (denied), or abandon a held incident (a person finishes it)."""
        inc = self.incident(incident_id)
        if inc.state == State.AWAITING_APPROVAL:
            self._move(inc, State.DENIED, "denied", f"denied by {by}: nothing changed",
                       closed_at=now_utc())
            return State.DENIED
        if inc.state == State.HELD:
            left = self._left_behind(inc.id)
            with self.journal.database.tx():  # closed and its mail queued, or neither
                self._move(inc, State.ABANDONED, "abandoned", f"abandoned by {by}; {left}",
                           closed_at=now_utc())
                self.outbox.send(notices.closed(
                    self.target, inc.id, f"Incident {inc.id} was abandoned by {by}; {left}"))
            return State.ABANDONED
        raise Refused("bad_state", f"incident {inc.id} is {inc.state}, not waiting for "
                      "approval or held")

    def _left_behind(self, incident_id: int) -> str:
        steps = self.journal.steps.of(incident_id)
        done = [s.name for s in steps if s.state == "done"]
        cut = [s.name for s in steps if s.state in ("interrupted", "failed", "running")]
        return ("state left as it was after: " + (", ".join(done) or "no step")
                + (f"; not finished: {', '.join(cut)}" if cut else ""))

    def open_manual(self, plan: Plan, reason: str, by: str,
                    forced_past: str | None) -> tuple[int, bool]:
        """A person's rollback: take the open incident over when nothing ran in it yet, else
        open one of its own; then start. Call with `lock` held (the caller planned under it)."""
        open_inc = self.current()
        tree = open_inc is not None and open_inc.incident_class in _TREE
        if self.busy or (open_inc and open_inc.state in (State.REMEDIATING, State.VERIFYING)):
            raise Refused("busy", f"{self.target} is already running a plan"
                          + (f" (incident {open_inc.id})" if open_inc else ""))
        plan_json = json.dumps(plan_to_dict(plan))
        takeover = (tree and open_inc is not None and not self.journal.steps.of(open_inc.id)
                    and State.REMEDIATING in TRANSITIONS[State(open_inc.state)])
        if open_inc is not None and takeover:
            incident_id = open_inc.id
            self.journal.incidents.mark_manual(incident_id)
            self.journal.incidents.update(incident_id, "manual", reason, reason=reason,
                                          plan=plan_json)
        else:
            incident_id = self.journal.incidents.open(
                self.target, plan.incident_class, reason, None, {"manual": True},
                automatic=False)
            self.journal.incidents.update(incident_id, "manual", reason, plan=plan_json)
            self.metrics.incident_opened(self.target, plan.incident_class, "manual")
            if open_inc is not None and tree:
                self.journal.incidents.add_event(open_inc.id, "superseded",
                                                 f"manual rollback in incident {incident_id}")
                if open_inc.state == State.HELD:  # so it closes by itself once the target is well
                    self._move(open_inc, State.ESCALATED)
        self._changed()
        if forced_past is not None:
            self.journal.incidents.add_event(incident_id, "forced", f"--force by {by} past: {forced_past}")
        self._start(incident_id, plan)
        return incident_id, bool(takeover)

    def request_lockdown(self, plan: Plan, text: str, evidence: dict[str, Any]) -> int:
        """An operator's lockdown request: it waits for `approve`, mailed to every contact."""
        pending = self.journal.incidents.open_of(self.target, LOCKDOWN_CLASS)
        if pending:
            raise Refused("bad_state", f"a lockdown of {self.target} is already waiting: "
                          f"incident {pending[0].id} (approve or deny it)")
        with self.journal.database.tx():  # the request and its mail, or neither
            incident_id = self.journal.incidents.open(
                self.target, LOCKDOWN_CLASS, text, None, evidence,
                state=State.AWAITING_APPROVAL.value, automatic=False)
            self.journal.incidents.update(incident_id, "planned", ", ".join(plan.step_names),
                                          plan=json.dumps(plan_to_dict(plan)))
            self._changed()
            self.outbox.send(notices.lockdown_requested(self.target, incident_id, text))
        return incident_id

    def forget_drill(self, incident_id: int) -> None:
        """A drill's incident, once closed, does not count as an automatic rollback."""
        inc = self.journal.incidents.get(incident_id)
        if inc is not None and inc.closed_at is not None:
            self.journal.incidents.mark_manual(incident_id)

    def close_removed(self, why: str) -> int:
        """The target left the config: its open incident ends, and people are told once."""
        inc = self.journal.incidents.open_for(self.target)
        if inc is None or State.ABANDONED not in TRANSITIONS[State(inc.state)]:
            return 0  # a running plan finishes first: its own end closes the incident
        with self.journal.database.tx():  # closed and its mail queued, or neither
            self._move(inc, State.ABANDONED, "closed", why, closed_at=now_utc())
            self.outbox.send(notices.closed(self.target, inc.id, f"Incident {inc.id}: {why}"))
        return inc.id

    # -- the runner ----------------------------------------------------------------------------

    def go_on(self, incident_id: int, plan: Plan) -> None:
        """A restart found the cut-off step done and the plan may go on by itself (recovery)."""
        self._start(incident_id, plan)

    def _start(self, incident_id: int, plan: Plan) -> None:
        self._changed()
        self.task = asyncio.create_task(self.runner.execute(incident_id, plan),
                                        name=f"rollback-{self.target}-{incident_id}")
        # The plan changes the deployed version and the incident: forget both when it ends.
        self.task.add_done_callback(self._ended)

    def _ended(self, _: object) -> None:
        self._changed()
        self.view.forget_version()


"""Every mail rollbackd writes, built here from typed notices: subject, body, kind and key.

Routing keys on `Notice.kind` (never on a parsed string), and the outbox derives each mail's
Message-ID from `Notice.event`, which is stable per incident and event: a notice enqueued twice
(a crash between mail and journal) is the same mail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from rollbackd.daemon.escalation.settings import Condition, EventKind
from rollbackd.daemon.incidents.changes import lines as change_lines

if TYPE_CHECKING:
    from rollbackd.daemon.journal import HeldMail, Incident, Ladder, StepRecord
    from rollbackd.daemon.rollback.base import Effect
    from rollbackd.policies.decision import Decision
    from rollbackd.policies.plans import Plan


class NoticeKind(StrEnum):
    """What a mail is about. The value is the Message-ID token (kept stable across releases)."""

    OPENED = "opened"
    STARTED = "started"
    RESOLVED = "resolved"
    FAILED = "failed"
    HELD = "held"
    CLOSED = "closed"
    TIER = "tier"
    REDEPLOY = "redeploy"
    LOCKDOWN = "lockdown"
    EMERGENCY_ADMIN = "emergency-admin"
    BACKUP = "backup"
    PROBE_ACCOUNT = "probe-account"
    JOURNEY = "journey"
    SELF_DEGRADED = "self-degraded"
    DIGEST = "digest"


ROUTE_AS: dict[NoticeKind, EventKind] = {
    NoticeKind.OPENED: "opened", NoticeKind.STARTED: "started",
    NoticeKind.RESOLVED: "resolved", NoticeKind.FAILED: "failed", NoticeKind.HELD: "held",
    NoticeKind.CLOSED: "other", NoticeKind.TIER: "escalated", NoticeKind.REDEPLOY: "redeploy",
    NoticeKind.LOCKDOWN: "other", NoticeKind.EMERGENCY_ADMIN: "other",
    NoticeKind.BACKUP: "backup", NoticeKind.SELF_DEGRADED: "other", NoticeKind.DIGEST: "digest",
    NoticeKind.PROBE_ACCOUNT: "probe_account", NoticeKind.JOURNEY: "journey",
}
"""The event kind routing rules (`[[escalation.routes]] events`) match each notice kind as."""


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    subject: str
    body: str
    incident_id: int | None = None
    key: str = ""
    """What makes this notice one of a kind within its incident (a step id, a tier number)."""
    everyone: bool = False
    """Every configured contact, not the routed roles: a breach or an emergency account."""
    conditions: frozenset[Condition] = frozenset()
    """What calls for more people than the class does, known when the notice is written."""

    @property
    def event(self) -> str:
        return f"{self.kind.value}-{self.key}" if self.key else self.kind.value

    @property
    def route_as(self) -> EventKind:
        return ROUTE_AS[self.kind]


def _subject(target: str, what: str) -> str:
    return f"[rollbackd] {target}: {what}"


# -- the life of an incident ---------------------------------------------------------------------

def _changes(changes: Sequence[str]) -> str:
    return ("\nWhat changed (suspects):\n" + "".join(f"  {c}\n" for c in changes)
            if changes else "")


def decided(target: str, incident_id: int, decision: Decision, what: str,
            approval: bool, history: Sequence[str] = (),
            changes: Sequence[str] = ()) -> Notice:
    """An incident opened and nothing runs now: it waits for approval, is escalated, held or a
    dry run. `what` is the plain phrase for the action. A limit that refused the rollback
    (the rate limit, an open breaker) goes to the emergency contact at once, with `history`:
    the target's recent automatic rollbacks. `changes`: the suspects (incidents.changes)."""
    if approval:
        body = (f"{decision.reason}\n\nNothing has been changed. To run the plan:\n\n"
                f"    rollbackctl approve {incident_id}\n\nTo refuse it:\n\n"
                f"    rollbackctl deny {incident_id}\n")
    else:
        body = (f"{decision.reason}\n\nNothing was changed. `rollbackctl show {incident_id}` "
                "has the evidence.\n")
    if decision.plan is not None:
        label = "Plan" if approval else "The plan it would have run (not run)"
        body += f"\n{label} ({decision.plan.kind}): {', '.join(decision.plan.step_names)}\n"
    body += _changes(changes)
    conditions: frozenset[Condition] = frozenset()
    if decision.gate is not None and decision.gate.value in ("rate_limit", "breaker_open"):
        conditions = frozenset({"limit_reached"})
        if history:
            body += ("\nAutomatic rollbacks of " + target + " that led here:\n"
                     + "".join(f"  {line}\n" for line in history))
    return Notice(NoticeKind.OPENED, _subject(target, f"{decision.incident_class}, {what}"),
                  body, incident_id, conditions=conditions)


def acting(target: str, inc: Incident, plan: Plan, steps: Sequence[str],
           already_mailed: bool, changes: Sequence[str] | None = None) -> Notice:
    """The plan is running now (the checklist's notify step). `changes`: the suspects; by
    default those the incident's evidence keeps under "changes" (stored when it opened)."""
    if changes is None:
        changes = change_lines(inc.evidence)
    probes = inc.evidence.get("probes", {})
    failing = "".join(f"  {p}: {e.get('status')} - {e.get('detail')}\n"
                      for p, e in probes.items() if isinstance(e, dict) and e.get("failing"))
    body = (f"{inc.reason}\n\nTarget: {target}\nIncident: {inc.id}\n"
            f"Detected: {inc.detected_at:%Y-%m-%d %H:%M:%S} UTC\n"
            + (f"Failing probes:\n{failing}" if failing else "")
            + f"Plan ({plan.kind}): {', '.join(steps)}\n" + _changes(changes)
            + f"\nrollbackd is acting now; `rollbackctl show {inc.id}` follows it.\n")
    # After an approval the incident has its "opened" mail already: this one says it started.
    kind = NoticeKind.STARTED if already_mailed else NoticeKind.OPENED
    return Notice(kind, _subject(target, f"{inc.incident_class}, {plan.kind}"
                                 + (" started" if already_mailed else "")), body, inc.id)


def resolved(target: str, inc: Incident, plan: Plan, verified_at: datetime,
             marked_bad: str | None, config: str | None = None) -> Notice:
    """`config`: what the restore_config step put back (file paths and key names only)."""
    to = ", ".join(f"{k} {v[:12]}" for k, v in plan.targets.items()) or "its target state"
    timings = "".join(
        f"  {label}: {at:%H:%M:%S} UTC"
        + (f" (+{(at - inc.detected_at).total_seconds():.1f}s)" if label != "onset" else "")
        + "\n"
        for label, at in (("onset", inc.onset_at), ("detected", inc.detected_at),
                          ("rollback started", inc.started_at),
                          ("rolled back", inc.rolled_back_at), ("verified", verified_at))
        if at is not None)
    body = (f"{target} is healthy again ({plan.kind} to {to}).\n\nTimings:\n{timings}\n"
            + (f"Config put back with the code: {config}.\n" if config else "")
            + (f"{marked_bad[:12]} is marked bad.\n" if marked_bad else "")
            + f"`rollbackctl show {inc.id} --report` has the incident report.\n")
    return Notice(NoticeKind.RESOLVED, _subject(target, f"resolved by {plan.kind}"), body,
                  inc.id)


def plan_failed(target: str, incident_id: int, plan: Plan, why: str, breaker: str) -> Notice:
    body = (f"The automatic {plan.kind} of {target} failed: {why}.\n"
            f"Circuit breaker: {breaker}. A person must take over; rollbackd will not "
            f"try another version.\n"
            f"`rollbackctl show {incident_id} --report` has the steps and evidence.\n")
    return Notice(NoticeKind.FAILED, _subject(target, "ROLLBACK FAILED, escalating"), body,
                  incident_id)


FOUND_SAYS = {"done": "its effect is there: it is journaled done and will not run again",
              "absent": "its effect is not there: approving runs it again",
              "unknown": "its effect is partly there or cannot be told: look before approving, "
                         "which runs it again"}


def held(inc: Incident, step: StepRecord, effect: Effect | None = None,
         between: bool = False) -> Notice:
    """A step a crash interrupted (or, `between`, the gap after it, before the next step
    started): the incident waits for a person."""
    found = "" if effect is None else (
        f"Checked after the restart, step {step.name} was found {effect.found.upper()}: "
        f"{effect.what}.\nSo {FOUND_SAYS[effect.found.value]}.\n\n")
    body = (f"{inc.held_reason}\n\n{found}`rollbackctl show {inc.id}` has the steps. To run "
            f"the rest of the plan:\n\n    rollbackctl approve {inc.id}\n\nTo abandon it:"
            f"\n\n    rollbackctl deny {inc.id}\n")
    return Notice(NoticeKind.HELD, _subject(inc.target, f"incident {inc.id} HELD for a person"),
                  body, inc.id, key=f"{step.id}.next" if between else str(step.id))


def closed(target: str, incident_id: int, why: str) -> Notice:
    """The incident ended without a remedy: its target was removed, a person abandoned it."""
    return Notice(NoticeKind.CLOSED, _subject(target, f"incident {incident_id} closed"),
                  f"{why}.\n\n`rollbackctl show {incident_id}` has the timeline.\n",
                  incident_id)


def tier_page(ladder: Ladder, next_tier: int, waited: str, timeout: str) -> Notice:
    incident_id = ladder.incident_id
    body = (f"Incident {incident_id} on {ladder.target} ({ladder.incident_class}) needs a "
            f"person and nobody has acknowledged it: tier {ladder.tier} was mailed "
            f"{waited} ago (timeout {timeout}). You are tier {next_tier}.\n\n"
            f"{ladder.reason}\n\nState: {ladder.state}. Detected: "
            f"{ladder.detected_at:%Y-%m-%d %H:%M:%S} UTC.\n\n"
            f"To take it:\n\n    rollbackctl ack {incident_id}\n\n"
            f"`rollbackctl show {incident_id} --report` has the evidence.\n")
    return Notice(NoticeKind.TIER, _subject(ladder.target, f"incident {incident_id} "
                                            f"UNACKNOWLEDGED, tier {next_tier}"),
                  body, incident_id, key=str(next_tier))


# -- about a target, not one incident ------------------------------------------------------------

def bad_redeploy(target: str, version: str, reason: str | None, at: float) -> Notice:
    body = (f"{version[:12]} was deployed again on {target}; it is marked bad: {reason}.\n"
            f"`rollbackctl known-good list {target}` and the earlier incident's report have "
            "the details.\n")
    return Notice(NoticeKind.REDEPLOY, _subject(target, f"bad version {version[:12]} redeployed"),
                  body, key=f"{target}-{version[:12]}-{at:.0f}")


def probe_account(target: str, probe: str, says: str, detail: str, since: datetime) -> Notice:
    """A login probe fails because of its own account (refused or locked): on-call fixes the
    probe; nothing is rolled back, since other users' logins may be fine."""
    body = (f"The login probe {probe} of {target} fails: {says}.\n  {detail}\n\n"
            "That is the probe's own account: a wrong password in its password file, or a "
            "lockout after repeated wrong passwords. It says nothing about other users' "
            "logins, so rollbackd changes nothing (no rollback, no database action).\n\n"
            "Check the probe's password file and unlock its account. To tell broken login from "
            "the probe's own trouble, give the probe a second known-good account "
            "(second_email, second_password_file): both refused is auth_broken.\n")
    return Notice(NoticeKind.PROBE_ACCOUNT, _subject(target, f"{says} (probe {probe}), nothing "
                                                     "changed"),
                  body, key=f"{target}-{probe}-{says.replace(' ', '-')}-{since:%Y%m%dT%H%M%S}")


def journey_step(target: str, probe: str, step: str, detail: str, since: datetime) -> Notice:
    """A user journey fails after its log-in: news for people, not a rollback by itself."""
    body = (f"The journey probe {probe} of {target} fails at step {step!r}:\n  {detail}\n\n"
            "Its log-in step passes, so rollbackd changes nothing: a broken later step (a "
            "project page, a job submission) is no reason by itself to restore a database or "
            "roll back a release, and no incident is opened. Look at the app's logs for that "
            f"request. If a release broke it, roll that release back:\n\n"
            f"    rollbackctl rollback {target}\n")
    return Notice(NoticeKind.JOURNEY, _subject(target, f"user journey fails at {step!r} (probe "
                                                       f"{probe}), nothing changed"),
                  body, key=f"{target}-{probe}-journey-{re.sub(r'[^A-Za-z0-9]+', '-', step)}-"
                            f"{since:%Y%m%dT%H%M%S}")


def emergency_admin(target: str, email: str, created: bool, uid: int, pid: int,
                    expires: datetime, at_ns: int) -> Notice:
    verb = "created" if created else "renewed"
    body = (f"uid {uid} (pid {pid}) created an emergency admin account on {target}: {email}.\n"
            f"Its one-time password was shown to that caller only; it stops working at "
            f"{expires:%Y-%m-%d %H:%M:%S} UTC.\nIf this was not expected, treat it as an "
            "incident.\n")
    return Notice(NoticeKind.EMERGENCY_ADMIN, _subject(target, f"emergency admin {email} {verb}"),
                  body, key=f"{target}-{at_ns}", everyone=True)


def lockdown_requested(target: str, incident_id: int, text: str) -> Notice:
    body = (f"{text}.\n\nNothing has been changed yet. To run it:\n\n"
            f"    rollbackctl approve {incident_id}\n\nTo refuse it:\n\n"
            f"    rollbackctl deny {incident_id}\n")
    return Notice(NoticeKind.OPENED, _subject(target, "LOCKDOWN requested, waiting for approval"),
                  body, incident_id, everyone=True)


def lockdown_done(target: str, incident_id: int, details: Sequence[str]) -> Notice:
    body = ("The lockdown of " + target + " ran:\n" + "".join(f"  {d}\n" for d in details)
            + "Accounts stay locked until a person unlocks them.\n")
    return Notice(NoticeKind.LOCKDOWN, _subject(target, "LOCKDOWN done"), body, incident_id,
                  everyone=True)  # a breach concerns every contact


def backup_problem(target: str, key: str, subject: str, body: str) -> Notice:
    """A scheduled backup or test restore that failed: news for the database people."""
    return Notice(NoticeKind.BACKUP, _subject(target, subject), body, key=key)


def self_degraded(key: str, reason: str, body: str) -> Notice:
    """The daemon's own fault (descriptors, memory, disk, spawn, loop lag): one per episode."""
    return Notice(NoticeKind.SELF_DEGRADED,
                  f"[rollbackd] rollbackd itself is degraded ({reason}): acting on no target",
                  body, key=key)


# -- storm digests -------------------------------------------------------------------------------

def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."


def digest(held_mails: Sequence[HeldMail], storm_max: int,
           window: float) -> tuple[Notice, list[str]]:
    """One digest listing every held mail by incident, and everyone those mails were for."""
    by_incident: dict[int | None, list[HeldMail]] = {}
    for h in held_mails:
        by_incident.setdefault(h.incident_id, []).append(h)
    recipients: dict[str, None] = {}
    lines = [f"More than {storm_max} incidents opened within {window:g}s: rollbackd groups their "
             f"mails here instead of sending {len(held_mails)} separately.", ""]
    for incident_id, mails in by_incident.items():
        first = mails[0]
        lines.append(f"Incident {incident_id}: {first.target} {first.incident_class} "
                     f"(now {first.state})")
        for m in mails:
            lines.append(f"- {m.event}: {m.subject}")
            if m.event in (NoticeKind.OPENED.value, NoticeKind.FAILED.value):
                lines.append(f"  {_first_line(m.body)}")
        lines.append("")
        for m in mails:
            recipients.update(dict.fromkeys(m.recipients))
    lines.append("`rollbackctl incidents` lists them; `rollbackctl show ID` has each one's "
                 "evidence; `rollbackctl ack ID` acknowledges one.")
    subject = (f"[rollbackd] incident storm: {len(by_incident)} incidents, "
               f"{len(held_mails)} updates grouped")
    first_id, last_id = held_mails[0].id, held_mails[-1].id
    notice = Notice(NoticeKind.DIGEST, subject, "\n".join(lines) + "\n",
                    key=f"{first_id}-{last_id}")
    return notice, list(recipients)

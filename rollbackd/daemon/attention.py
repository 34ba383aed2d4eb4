"""What people are told and nobody acts on: a login probe's own account and a user journey.

A refused or locked probe account says nothing of other users' logins, and a journey failing
after its log-in (a project page, a job submission) is no reason by itself to restore a
database or roll back a release: no incident class claims either (policies/classify.py).
On-call is mailed once per episode and reason, and `status` shows each beside the target's
state (docs/incidents.md).
"""

from __future__ import annotations

import logging
import re

from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.policies.classify import TargetHealth, journey_trouble, probe_account_trouble
from rollbackd.probes.login import SAYS
from rollbackd.probes.observation import Symptom

log = logging.getLogger("rollbackd.monitor")

# A journey's failure detail starts with the step it names: step 'create a project': ...
STEP_NAME = re.compile(r"""^step (["'])(.*?)\1: """)


class Attention:
    """One target's told-not-acted troubles, and what of them was mailed in this episode."""

    def __init__(self, target: str, outbox: Outbox) -> None:
        self.target = target
        self.outbox = outbox
        self._account_mailed: dict[str, set[Symptom]] = {}
        """Per login probe, which of its own account's troubles were mailed (refused, then
        locked, is two mails)."""
        self._journey_mailed: dict[str, set[str]] = {}
        """Per journey probe, which failing steps were mailed (a later step breaking too is
        news)."""

    def probe_account(self, health: TargetHealth) -> dict[str, str]:
        """Login probes failing because of their own account, in plain words."""
        return {p: SAYS[s] for p, s in probe_account_trouble(health).items()}

    def journey_steps(self, health: TargetHealth) -> dict[str, str]:
        """Journey probes failing after their log-in -> the failing step."""
        found = {}
        for probe in journey_trouble(health):
            last = health[probe][1].last
            match = STEP_NAME.match(last.detail) if last is not None else None
            found[probe] = match[2] if match else "a later step"
        return found

    def report(self, health: TargetHealth) -> None:
        """Mail on-call what is new since the last look (once per episode and reason)."""
        self._report_accounts(health)
        self._report_journeys(health)

    def _report_accounts(self, health: TargetHealth) -> None:
        trouble = probe_account_trouble(health)
        for probe in set(self._account_mailed) - set(trouble):
            del self._account_mailed[probe]  # recovered, or failing for another reason now
        for probe, symptom in trouble.items():
            mailed = self._account_mailed.setdefault(probe, set())
            h = health[probe][1]
            if symptom in mailed or h.last is None:
                continue
            mailed.add(symptom)
            log.warning("target=%s probe=%s status=probe-account reason=%r detail=%r",
                        self.target, probe, SAYS[symptom], h.last.detail)
            self.outbox.send(notices.probe_account(self.target, probe, SAYS[symptom],
                                                   h.last.detail, h.onset or h.last.at))

    def _report_journeys(self, health: TargetHealth) -> None:
        failing = self.journey_steps(health)
        for probe in set(self._journey_mailed) - set(failing):
            del self._journey_mailed[probe]  # passing again: the next failure is news
        for probe, step in failing.items():
            mailed = self._journey_mailed.setdefault(probe, set())
            h = health[probe][1]
            if step in mailed or h.last is None:
                continue
            mailed.add(step)
            log.warning("target=%s probe=%s status=journey-step-failing step=%r detail=%r",
                        self.target, probe, step, h.last.detail)
            self.outbox.send(notices.journey_step(self.target, probe, step, h.last.detail,
                                                  h.onset or h.last.at))

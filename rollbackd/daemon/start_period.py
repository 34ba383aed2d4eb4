"""One target's start period: notices deploys and restarts, and holds app_down while the
release starts (the rule is rollbackd/policies/start_period.py; this keeps its state and asks the
deployment's executor about the process only when app_down is found, never per probe run)."""

from __future__ import annotations

import logging
import time

from rollbackd.daemon.rollback.base import Executor, Process, TellsProcess
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import short
from rollbackd.policies.start_period import Phase, Start, Verdict, judge, opens

log = logging.getLogger("rollbackd.monitor")

LOOK_AGE = 1.0
"""Seconds a look at the process is reused: evaluations come once per probe run."""
DEAD_FOR = 1.0
"""A process seen not running must still be so this much later: a restart removes the pidfile
(or replaces the container) for a moment."""

Found = tuple[IncidentClass, list[str]] | None


class StartWatch:
    def __init__(self, target: str, period: float, executor: Executor | None) -> None:
        self.target = target
        self.period = period
        self.executor = executor if isinstance(executor, TellsProcess) else None
        self.start: Start | None = None
        self.note = ""
        """What the start period said of the app_down found last (for the incident's reason)."""
        self.holding = ""
        """While app_down is held: why (for `rollbackctl status`); empty otherwise."""
        self._version: str | None = None
        self._healthy = True
        """The target passed every probe at some moment since the current start."""
        self._held: Start | None = None
        """The start app_down was held for (said once in the log; named when the period ends)."""
        self._look: tuple[float, Process] | None = None
        self._dead_since: float | None = None

    def saw(self, version: str | None, passing: bool) -> None:
        """What every picture knows anyway: the deployed version, and whether all passes."""
        if version is not None and self._version is not None and version != self._version:
            self._begin(Start(time.monotonic(), f"release {short(version)} deployed",
                              release=True))
        if version is not None:
            self._version = version
        if passing:
            self._healthy, self._held, self._dead_since = True, None, None
            self.holding = ""

    def _begin(self, start: Start) -> None:
        self.start, self._healthy, self._held, self._dead_since = start, False, None, None
        log.info("target=%s status=start-period cause=%r period=%gs", self.target, start.cause,
                 self.period)

    async def _process(self, now: float) -> Process | None:
        if self.executor is None:
            return None
        if self._look is None or now - self._look[0] >= LOOK_AGE:
            self._look = (now, await self.executor.process())
        return self._look[1]

    def _running(self, proc: Process | None, now: float) -> bool | None:
        if proc is None or proc.running is None:
            return None
        if proc.running:
            self._dead_since = None
            return True
        if self._dead_since is None:
            self._dead_since = now
        return False if now - self._dead_since >= DEAD_FOR else None

    async def judge(self, found: Found) -> Found:
        """app_down held while starting (None), or as found; sets `note`."""
        self.note = ""
        if found is None or found[0] is not IncidentClass.APP_DOWN or self.period <= 0:
            if found is not None:
                self.holding = ""
            return found
        now = time.monotonic()
        proc = await self._process(now)
        if proc is not None and proc.running and proc.started_ago is not None:
            seen = Start(now - proc.started_ago, f"the restart of {proc.what}")
            if opens(self.start, seen, self._healthy):
                if now - seen.at < self.period:
                    self._begin(seen)
                else:  # long up (say, the daemon just started): no period to say anything of
                    self.start, self._healthy = seen, False
        verdict = judge(self.start, now, self.period, self._running(proc, now),
                        self._held is not None and self._held == self.start)
        return self._apply(verdict, found, proc)

    def _apply(self, verdict: Verdict, found: Found, proc: Process | None) -> Found:
        self.holding = verdict.note if verdict.phase is Phase.HOLD else ""
        if verdict.phase is Phase.HOLD:
            if self._held != self.start:
                self._held = self.start
                log.info("target=%s status=starting reason=%r", self.target, verdict.note)
            return None
        if verdict.phase is Phase.EXITED and proc is not None:
            self.note = f"{verdict.note} ({proc.what})"
        else:
            self.note = verdict.note
        return found

"""One target's known-good ledger, kept up to date as the monitor evaluates its probes.

Which release runs (asked of the deployment, cached for a moment, and not asked again while the
deployment's version stamp stands), whether its work tree is clean, how long it has been clean
with every probe passing (policies/ledger.py decides), the config it carried when it earned
known-good, and the news of a release marked bad coming back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.rollback.base import Executor, StampsVersion, TellsLocalChanges
from rollbackd.daemon.rollback.release_config import ReleaseConfig
from rollbackd.policies.ledger import LedgerEntry, observe, redeployed_bad

log = logging.getLogger("rollbackd.monitor")

RECHECK = 60.0
"""Seconds a version stamp that stands is trusted before the deployment is asked anyway."""
DIRTY_EVERY = 30.0
"""Seconds between two looks for local edits in a clean work tree while the version stands
(`git status` reads the whole tree). A release about to earn known-good is looked at again
first, whatever the age; a dirty tree is looked at on every read, so an edit undone starts the
clock at once."""


class ReleaseLedger:
    def __init__(self, target: str, journal: Journal, outbox: Outbox,
                 executor: Callable[[], Executor | None],
                 release_config: ReleaseConfig | None,
                 stable_after: Callable[[], float],
                 incident_open: Callable[[], bool], busy: Callable[[], bool],
                 seen: Callable[[], tuple[str | None, str | None]]) -> None:
        self.target = target
        self.journal = journal
        self.outbox = outbox
        self._executor = executor
        self.release_config = release_config
        self._stable_after = stable_after
        self._incident_open = incident_open
        self._busy = busy
        self._seen = seen
        """The schema revision and key fingerprint the probes see now (recorded with the title)."""
        self._version: tuple[float, str | None] = (0.0, None)
        self._stamp: tuple[object, ...] | None = None
        self._asked_at = self._dirty_at = 0.0
        """When the deployment was last asked its version, and for local edits."""
        self._dirty = False
        """The deployment's work tree has local edits: its version cannot earn known-good."""
        self._warned_bad: str | None = None

    @property
    def version(self) -> str | None:
        """The deployed version as last read (None: never read, or no deployment)."""
        return self._version[1]

    def forget_version(self) -> None:
        self._version, self._stamp = (0.0, None), None

    async def current_version(self, max_age: float = 2.0) -> str | None:
        """The deployed version, at most `max_age` seconds old (0: ask the deployment now)."""
        executor = self._executor()
        if executor is None:
            return None
        fetched, version = self._version
        now = time.monotonic()
        if now - fetched <= max_age:
            return version
        # Taken before asking: a move between the two shows as a changed stamp next time.
        stamp = executor.version_stamp() if isinstance(executor, StampsVersion) else None
        if (max_age > 0 and version is not None and stamp is not None and stamp == self._stamp
                and now - self._asked_at < RECHECK):
            self._version, moved = (now, version), False
        else:
            version = await executor.current_version()
            moved = version != self._version[1]
            # Kept before any other await: a read meanwhile sees this answer, not the one it
            # replaces (one that wrote back a stale None after looking for edits held the demo's
            # version unknown for a minute on a loaded machine). A version the deployment could
            # not tell is asked again at the next read.
            self._stamp = stamp if version is not None else None
            self._asked_at, self._version = now, (time.monotonic(), version)
        if moved or max_age == 0 or self._dirty \
                or time.monotonic() - self._dirty_at >= DIRTY_EVERY:
            await self._look_for_edits(executor)
        return version

    async def _look_for_edits(self, executor: Executor) -> None:
        if isinstance(executor, TellsLocalChanges):
            self._dirty = await executor.local_changes() != []
        self._dirty_at = time.monotonic()

    async def update(self, passing: bool | None, max_age: float) -> str | None:
        """Advance the deployed release's entry by one evaluation: `passing` True (every probe
        passing), False, or None (undecided: the clock neither restarts nor advances)."""
        version = await self.current_version(max_age)
        if version is None:
            return None
        now = now_utc()
        entries = {e.version: e for e in self.journal.ledger.entries(self.target)}
        entry = entries.get(version) or LedgerEntry(version, now)
        if passing is None:
            if version not in entries:
                self.journal.ledger.save(self.target, entry)
            self._report_bad_redeploy(list(entries.values()), version)
            return version
        # Known-good needs every probe passing with no incident open against the release (an
        # incident still open keeps the clock at zero), and a clean work tree: a dirty one is
        # not the commit's release.
        clean = passing and not self._incident_open() and not self._dirty
        revision, key = self._seen()
        updated = observe(entry, clean, now, self._stable_after(), revision, key)
        if updated.known_good and not entry.known_good and (executor := self._executor()):
            await self._look_for_edits(executor)  # edits since the last look spoil it
            if self._dirty:
                updated = observe(entry, False, now, self._stable_after(), revision, key)
        if updated != entry or version not in entries:
            self.journal.ledger.save(self.target, updated)
            if updated.known_good and not entry.known_good:
                log.info("target=%s version=%s status=known-good", self.target, version[:12])
                await self._record_config(version)
        self._report_bad_redeploy(list(entries.values()), version)
        return version

    async def _record_config(self, version: str) -> None:
        """The config the release ran with as it earned known-good: what a rollback to it puts
        back. Never raises: a release without its config still rolls back its code."""
        if self.release_config is None:
            return
        try:
            said = await self.release_config.record(version)
        except Exception as exc:  # noqa: BLE001 - logged without any value, never raised
            log.error("target=%s version=%s status=config-not-recorded reason=%r", self.target,
                      version[:12], f"{type(exc).__name__}: {exc}")
            return
        log.info("target=%s version=%s status=config-recorded detail=%r", self.target,
                 version[:12], said)

    def _report_bad_redeploy(self, entries: list[LedgerEntry], version: str) -> None:
        if version != self._warned_bad:
            self._warned_bad = None  # another version since: the next bad redeploy is news again
        bad = redeployed_bad(entries, version)
        if bad is None or self._warned_bad == version or self._busy():
            return
        if self._incident_open():
            return  # the version is bad because this very incident rolled it back
        self._warned_bad = version
        log.warning("target=%s version=%s status=bad-version-redeployed earlier=%r",
                    self.target, version[:12], bad.bad_reason)
        self.outbox.send(notices.bad_redeploy(self.target, version, bad.bad_reason, time.time()))

"""A target's scheduled backups: each backed-up executor gets the store; a job backs them up,
and another proves on its own schedule that the newest database dump restores (test restore)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rollbackd.daemon.backup.base import (
    Backuper,
    BackupFailed,
    BackupFailure,
    BackupRefused,
    RestoreTestable,
    RestoreTestFailed,
    StoredBackup,
)
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.escalation import notices
from rollbackd.daemon.escalation.notices import Notice
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.rollback.data_settings import BackupSettings

if TYPE_CHECKING:
    from rollbackd.daemon.metrics import Metrics

log = logging.getLogger("rollbackd.backup")

BUSY_POLL = 1.0
"""Seconds between looks at `busy` while a test restore runs: a rollback that starts stops it."""

COSTLY = 60.0
"""A test restore that could not finish (error) after this many seconds of work waits a whole
period before the next attempt: a full disk or a timeout must not load the server every look."""

Tell = Callable[[Notice], object]
"""Mail people a notice that is about no incident (the outbox's send)."""


class TargetBackups:
    def __init__(self, store: BackupStore, backupers: Sequence[Backuper], interval: float,
                 busy: Callable[[], bool], testers: Sequence[tuple[str, RestoreTestable]] = (),
                 test_every: float = 0.0, metrics: Metrics | None = None,
                 tell: Tell | None = None) -> None:
        self.store = store
        self.backupers = list(backupers)
        self.interval = interval
        self.busy = busy
        """True while the target runs a rollback: its own backup_current step backs up then."""
        self.testers = list(testers) if test_every > 0 else []
        """(backup kind, executor) pairs whose backups get a scheduled test restore."""
        self.test_every = test_every
        self.metrics = metrics
        self.tell = tell
        self._retry_at: dict[str, datetime] = {}
        """After a costly error, no attempt on that kind before this time (in memory only)."""

    @property
    def target(self) -> str:
        return self.store.target

    def first_run(self, now: datetime | None = None) -> datetime:
        """Now, unless every kind has a verified backup younger than the interval: a restarted
        daemon does not pile up backups."""
        now = now or now_utc()
        due = [now]
        for b in self.backupers:
            newest = self.store.newest_verified(b.kind)
            if newest is None:
                return now
            due.append(newest.created_at + timedelta(seconds=self.interval))
        return max(due)

    async def run(self) -> None:
        """One scheduled pass; never raises (a failed backup is logged, the next pass retries)."""
        if self.busy():
            log.info("target=%s backup=scheduled status=skipped reason=rollback running",
                     self.target)
            return
        for b in self.backupers:
            try:
                await self.store.take(b)
            except BackupFailed as exc:
                self._failed_backup(b.kind, str(exc))
            except Exception as exc:  # the daemon outlives a broken backup method
                log.exception("target=%s backup=%s status=crashed", self.target, b.kind)
                self._failed_backup(b.kind, f"the backup method crashed: {type(exc).__name__}: "
                                    f"{exc}")
            try:
                await self.store.enforce_retention(b.kind)
            except Exception:
                log.exception("target=%s backup=%s status=retention-failed", self.target,
                              b.kind)

    def _failed_backup(self, kind: str, why: str) -> None:
        """A failed scheduled backup is news: counted, kept for `backups` and `status`, and
        mailed (the DBA) every time, with the reason in plain words."""
        at = now_utc()
        log.error("target=%s backup=%s status=failed reason=%r", self.target, kind, why)
        self.store.failures[kind] = BackupFailure(at, why)
        if self.metrics is not None:
            self.metrics.backups_failed.labels(self.target, kind).inc()
        if self.tell is None:
            return
        newest = self.store.newest_verified(kind)
        since = (f"The newest verified {kind} backup is #{newest.id} from "
                 f"{newest.created_at:%Y-%m-%d %H:%M:%S} UTC: a restore now would lose "
                 "everything since." if newest else f"There is no verified {kind} backup at all.")
        try:
            self.tell(notices.backup_problem(
                self.target, f"backup-{self.target}-{kind}-{at:%Y%m%dT%H%M%S}",
                f"scheduled {kind} backup FAILED",
                f"The scheduled {kind} backup of {self.target} at {at:%Y-%m-%d %H:%M:%S} UTC "
                f"failed; no copy was taken:\n\n    {why}\n\n{since}\n"
                f"The next scheduled backup runs in {self.interval:g}s; "
                f"`rollbackctl backup {self.target} --kind {kind}` takes one now, "
                f"`rollbackctl backups {self.target}` shows the catalog.\n"))
        except Exception:  # a mail that cannot be queued must not hide the failure
            log.exception("target=%s backup=%s mail=not queued", self.target, kind)

    # -- the scheduled test restore -------------------------------------------------------------

    @property
    def test_check(self) -> float:
        """How often the test-restore job looks whether one is due (cheap when none is)."""
        return min(self.interval, self.test_every)

    def first_test(self, now: datetime | None = None) -> datetime:
        """Now, unless a test restore passed within test_every: then when that period ends."""
        now = now or now_utc()
        due = []
        for kind, _ in self.testers:
            last = self.store.last_restore_test(kind)
            due.append(now if last is None else last + timedelta(seconds=self.test_every))
        return max(now, min(due, default=now))

    async def test_restores(self, now: datetime | None = None) -> dict[str, str]:
        """One scheduled look: for each kind whose last passed test restore is older than
        test_every, the newest verified backup is restored into a scratch database and checked.
        Returns {kind: passed|failed|error|cancelled} for what ran; never raises."""
        ran: dict[str, str] = {}
        at = now or now_utc()
        for kind, tester in self.testers:
            if self.busy():
                log.info("target=%s restore-test=%s status=skipped reason=rollback running",
                         self.target, kind)
                break
            if kind in self._retry_at and at < self._retry_at[kind]:
                continue  # a costly error backs off for a period
            b = self.store.due_for_restore_test(kind, self.test_every, now)
            if b is None:
                continue
            try:
                ran[kind] = await self._test_one(kind, tester, b)
            except Exception:  # the daemon outlives a broken test restore
                log.exception("target=%s backup=%s id=%d restore-test=crashed", self.target,
                              kind, b.id)
                ran[kind] = self._count("error")
        return ran

    async def _test_one(self, kind: str, tester: RestoreTestable, b: StoredBackup) -> str:
        started = time.monotonic()
        log.info("target=%s backup=%s id=%d restore-test=started", self.target, kind, b.id)
        try:
            b = await self.store.checked(b.id, kind)  # the file still is what was verified
        except BackupRefused as exc:  # checked() marked it unusable already
            return self._failed(kind, b, str(exc), marked=True)
        task = asyncio.ensure_future(tester.test_restore(b))
        try:
            while not (await asyncio.wait({task}, timeout=BUSY_POLL))[0]:
                if self.busy():  # a rollback started: it may need the server's every core
                    task.cancel()
                    await asyncio.wait({task})
                    log.info("target=%s backup=%s id=%d restore-test=cancelled "
                             "reason=rollback started", self.target, kind, b.id)
                    return "cancelled"
        finally:
            if not task.done():  # we are cancelled ourselves: the scratch database goes too
                task.cancel()
                await asyncio.wait({task})
        try:
            detail = task.result()
        except RestoreTestFailed as exc:
            return self._failed(kind, b, str(exc))
        except Exception as exc:  # noqa: BLE001 - not the backup's fault: tried again later
            took = time.monotonic() - started
            retry = self.test_every if took > COSTLY else 0.0  # else: at the next look
            self._retry_at[kind] = now_utc() + timedelta(seconds=retry)
            log.error("target=%s backup=%s id=%d restore-test=error after=%.0fs retry_in=%s "
                      "reason=%r", self.target, kind, b.id, took,
                      f"{retry:.0f}s" if retry else "next look", str(exc) or type(exc).__name__)
            return self._count("error")
        self.store.record_restore_test(b, None)
        log.info("target=%s backup=%s id=%d restore-test=passed duration=%.1fs detail=%r",
                 self.target, kind, b.id, time.monotonic() - started, detail)
        return self._count("passed")

    def _failed(self, kind: str, b: StoredBackup, why: str, marked: bool = False) -> str:
        self.store.record_restore_test(b, why)
        if not marked:
            self.store.mark_unusable(b, f"test restore failed: {why}")
        log.error("target=%s backup=%s id=%d restore-test=failed reason=%r", self.target, kind,
                  b.id, why)
        if self.tell is not None:
            try:
                self.tell(notices.backup_problem(
                    self.target, f"restore-test-{self.target}-{kind}-{b.id}",
                    f"{kind} backup #{b.id} failed its test restore",
                    f"The scheduled test restore of {kind} backup #{b.id} of {self.target} "
                    f"({b.path.name}, taken {b.created_at:%Y-%m-%d %H:%M:%S} UTC) failed:\n\n"
                    f"    {why}\n\nThe backup is marked unusable: no restore will use it; "
                    "older verified backups still count. The live database was not touched.\n"
                    f"`rollbackctl backups {self.target}` lists the catalog; "
                    f"`rollbackctl backup {self.target} --kind {kind}` takes a new backup, which "
                    "the next scheduled test restore proves.\n"))
            except Exception:  # a mail that cannot be queued must not hide the failure
                log.exception("target=%s restore-test=failed mail=not queued", self.target)
        return self._count("failed")

    def _count(self, result: str) -> str:
        if self.metrics is not None:
            self.metrics.restore_tests.labels(self.target, result).inc()
        return result


@runtime_checkable
class BacksUp(Protocol):
    """An executor whose component is backed up: attach_backups gives it the target's store.
    Here, not in base.py: it names the store, and the store is built on base.py."""

    def backupers(self) -> Sequence[Backuper]: ...

    def attach(self, store: BackupStore) -> None: ...


def attach_backups(target: str, settings: BackupSettings, journal: Journal,
                   components: Mapping[Any, Any], busy: Callable[[], bool],
                   metrics: Metrics | None = None, tell: Tell | None = None
                   ) -> TargetBackups | None:
    """Give every backed-up executor of the target its store under state_dir/backups; those
    that can prove a dump restores get the scheduled test restore (backups.test_restore_every)."""
    store = BackupStore(journal, journal.path.parent / "backups", target, settings.keep)
    backupers: list[Backuper] = []
    testers: list[tuple[str, RestoreTestable]] = []
    for executor in components.values():
        if isinstance(executor, BacksUp):
            executor.attach(store)
            found = list(executor.backupers())
            backupers += found
            if isinstance(executor, RestoreTestable):
                testers += [(b.kind, executor) for b in found if b.kind == "database"]
    if not backupers:
        return None
    if metrics is not None:  # at zero from the start: the alert sees the very first failure
        for b in backupers:
            metrics.backups_failed.labels(target, b.kind)
    return TargetBackups(store, backupers, settings.interval, busy, testers,
                         settings.test_restore_every, metrics, tell)

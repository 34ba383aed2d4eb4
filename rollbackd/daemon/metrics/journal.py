"""Metrics read from the journal at scrape time: what survives restarts, read-only, never raising."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from datetime import datetime
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database
from rollbackd.daemon.journal.store import Repositories
from rollbackd.policies.breaker import Breaker, BreakerMode, current
from rollbackd.policies.overrides import OverrideKind, active, in_maintenance
from rollbackd.policies.settings import PolicySettings

log = logging.getLogger("rollbackd.metrics")

BREAKER_VALUE = {BreakerMode.CLOSED: 0, BreakerMode.HALF_OPEN: 1, BreakerMode.OPEN: 2}


class JournalCollector(Collector):
    """Reads the journal over a read-only connection of its own, so a scrape (in the metrics
    server's thread) never shares the daemon's connection or its transactions. A section that
    cannot be read is left out and `rollbackd_journal_readable` turns 0; a scrape never fails."""

    def __init__(self, path: Path, policies: Callable[[], Mapping[str, PolicySettings]],
                 clock: Callable[[], datetime] = now_utc) -> None:
        self.path = path
        self.policies = policies
        """The configured targets and their policies, read at each scrape (reload changes them)."""
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily("rollbackd_journal_readable",
                                     "1 if every journal metric could be read at this scrape")
        ok = True
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
            db.row_factory = sqlite3.Row
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.debug("metrics journal=%s status=unreadable reason=%s", self.path, exc)
            ok = False
        else:
            with closing(db):
                metrics, ok = self.sections(Repositories(Database(db)))
                yield from metrics
        readable.add_metric([], 1 if ok else 0)
        yield readable

    def sections(self, journal: Repositories) -> tuple[list[Metric], bool]:
        """Every section's metrics read through `journal` (a connection of the scrape's own),
        and whether all of them could be read."""
        now, ok, out = self.clock(), True, []
        for section in (self._incidents, self._breakers, self._overrides, self._outbox,
                        self._backups, self._ledger, self._failures):
            try:
                # Each section whole or not at all: a half-read one shows false zeros.
                out += list(section(journal, now))
            except Exception as exc:  # noqa: BLE001
                ok = False
                log.debug("metrics section=%s status=failed reason=%s", section.__name__, exc)
        return out, ok

    def _policy(self, target: str) -> PolicySettings:
        return self.policies().get(target) or PolicySettings()

    def _incidents(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        count = GaugeMetricFamily("rollbackd_incidents_open", "Open incidents",
                                  labels=["target", "incident_class", "state"])
        since = GaugeMetricFamily(
            "rollbackd_incident_detected_timestamp_seconds",
            "When the oldest open incident of the target, class and state was detected",
            labels=["target", "incident_class", "state"])
        for c in j.incidents.open_counts():
            count.add_metric([c.target, c.incident_class, c.state], c.count)
            if c.oldest_detected_at is not None:
                since.add_metric([c.target, c.incident_class, c.state],
                                 c.oldest_detected_at.timestamp())
        yield count
        yield since

    def _breakers(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily("rollbackd_breaker_state",
                              "Circuit breaker: 0 closed, 1 half-open, 2 open",
                              labels=["target", "plan"])
        for target, plan, stored in j.breakers.all():
            b = current(Breaker(stored.mode, (), stored.opened_at), now,
                        self._policy(target).breaker_reset)
            g.add_metric([target, plan], BREAKER_VALUE[b.mode])
        yield g

    def _overrides(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "rollbackd_override_active",
            "1 while an operator override (pause, silence, maintenance) or a weekly maintenance "
            "window applies to the target", labels=["target", "kind"])
        found = j.overrides.active(now)
        for target, policy in self.policies().items():
            for kind in OverrideKind:
                g.add_metric([target, kind.value],
                             1 if active(found, target, now, kind) is not None else 0)
            g.add_metric([target, "maintenance_window"],
                         1 if in_maintenance(policy.maintenance, now) is not None else 0)
        yield g

    def _outbox(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        mails = GaugeMetricFamily(
            "rollbackd_escalation_mails",
            "Outbox mails: sent, queued, and failing (queued after a failed attempt)",
            labels=["state"])
        failures = CounterMetricFamily(
            "rollbackd_escalation_mail_failed_attempts",
            "Delivery attempts the SMTP server did not accept (each is retried)")
        stats = j.mail.stats()
        for state, n in (("sent", stats.sent), ("queued", stats.queued),
                         ("failing", stats.failing)):
            mails.add_metric([state], n)
        failures.add_metric([], stats.failed_attempts)
        yield mails
        yield failures

    def _backups(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "rollbackd_backup_newest_verified_timestamp_seconds",
            "Creation time of the newest verified backup; its age is time() minus this",
            labels=["target", "kind"])
        for (target, kind), at in sorted(j.backups.newest_verified().items()):
            g.add_metric([target, kind], at.timestamp())
        yield g
        yield from self._restore_tests(j)

    def _restore_tests(self, j: Repositories) -> Iterator[Metric]:
        passed = GaugeMetricFamily(
            "rollbackd_backup_restore_test_timestamp_seconds",
            "When a scheduled test restore of one of the target's backups last passed",
            labels=["target", "kind"])
        failed = GaugeMetricFamily(
            "rollbackd_backup_restore_test_failed_timestamp_seconds",
            "When a scheduled test restore of one of the target's backups last failed (that "
            "backup is marked unusable)", labels=["target", "kind"])
        tests = j.backups.restore_tests()
        for family, last in ((passed, tests.passed), (failed, tests.failed)):
            for (target, kind), at in sorted(last.items()):
                family.add_metric([target, kind], at.timestamp())
            yield family

    def _ledger(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        info = InfoMetricFamily("rollbackd_known_good_version",
                                "The target's newest known-good version (rollbacks go to one)",
                                labels=["target"])
        since = GaugeMetricFamily("rollbackd_known_good_timestamp_seconds",
                                  "When the newest known-good version earned the title",
                                  labels=["target"])
        for good in j.ledger.newest_known_good():
            info.add_metric([good.target], {"version": good.version})
            since.add_metric([good.target], good.known_good_at.timestamp())
        yield info
        yield since

    def _failures(self, j: Repositories, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily("rollbackd_rollback_last_failure_timestamp_seconds",
                              "When a rollback of the target last failed", labels=["target"])
        for target, at in sorted(j.incidents.last_failures().items()):
            g.add_metric([target], at.timestamp())
        yield g

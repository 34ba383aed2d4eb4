"""Metrics read from the journal at scrape time: what survives restarts, read-only, never raising."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from policies.breaker import Breaker, BreakerMode, current
from policies.lifecycle import OPEN_STATES
from policies.overrides import Override, OverrideKind, active, in_maintenance
from policies.settings import PolicySettings

log = logging.getLogger("rollbackd.metrics")

BREAKER_VALUE = {BreakerMode.CLOSED: 0, BreakerMode.HALF_OPEN: 1, BreakerMode.OPEN: 2}


def _dt(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _ts(text: object) -> float | None:
    at = _dt(text)
    return at.timestamp() if at else None


class JournalCollector(Collector):
    """Reads the journal over a read-only connection of its own, so a scrape (in the metrics
    server's thread) never shares the daemon's connection or its transactions. A section that
    cannot be read is left out and `rollbackd_journal_readable` turns 0; a scrape never fails."""

    def __init__(self, path: Path, policies: Callable[[], Mapping[str, PolicySettings]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
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
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.debug("metrics journal=%s status=unreadable reason=%s", self.path, exc)
            ok = False
        else:
            with closing(db):
                now = self.clock()
                for section in (self._incidents, self._breakers, self._overrides, self._outbox,
                                self._backups, self._ledger, self._failures):
                    try:
                        # Each section whole or not at all: a half-read one shows false zeros.
                        yield from list(section(db, now))
                    except Exception as exc:  # noqa: BLE001
                        ok = False
                        log.debug("metrics section=%s status=failed reason=%s",
                                  section.__name__, exc)
        readable.add_metric([], 1 if ok else 0)
        yield readable

    def _policy(self, target: str) -> PolicySettings:
        return self.policies().get(target) or PolicySettings()

    def _incidents(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        count = GaugeMetricFamily("rollbackd_incidents_open", "Open incidents",
                                  labels=["target", "incident_class", "state"])
        since = GaugeMetricFamily(
            "rollbackd_incident_detected_timestamp_seconds",
            "When the oldest open incident of the target, class and state was detected",
            labels=["target", "incident_class", "state"])
        marks = ",".join("?" * len(OPEN_STATES))
        rows = db.execute(
            "SELECT target, incident_class, state, COUNT(*), MIN(detected_at) FROM incidents"
            f" WHERE state IN ({marks}) GROUP BY target, incident_class, state",
            sorted(OPEN_STATES)).fetchall()
        for target, cls, state, n, detected in rows:
            count.add_metric([target, cls, state], n)
            if (at := _ts(detected)) is not None:
                since.add_metric([target, cls, state], at)
        yield count
        yield since

    def _breakers(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily("rollbackd_breaker_state",
                              "Circuit breaker: 0 closed, 1 half-open, 2 open",
                              labels=["target", "plan"])
        for target, plan, mode, opened in db.execute(
                "SELECT target, plan_kind, mode, opened_at FROM breakers"):
            b = current(Breaker(BreakerMode(mode), (), _dt(opened)), now,
                        self._policy(target).breaker_reset)
            g.add_metric([target, plan], BREAKER_VALUE[b.mode])
        yield g

    def _overrides(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "rollbackd_override_active",
            "1 while an operator override (pause, silence, maintenance) or a weekly maintenance "
            "window applies to the target", labels=["target", "kind"])
        found = tuple(
            Override(OverrideKind(kind), target, until, "")
            for kind, target, until_text in db.execute(
                "SELECT kind, target, until FROM overrides WHERE ended_at IS NULL")
            if (until := _dt(until_text)) is not None and until > now)
        for target, policy in self.policies().items():
            for kind in OverrideKind:
                g.add_metric([target, kind.value],
                             1 if active(found, target, now, kind) is not None else 0)
            g.add_metric([target, "maintenance_window"],
                         1 if in_maintenance(policy.maintenance, now) is not None else 0)
        yield g

    def _outbox(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        mails = GaugeMetricFamily(
            "rollbackd_escalation_mails",
            "Outbox mails: sent, queued, and failing (queued after a failed attempt)",
            labels=["state"])
        failures = CounterMetricFamily(
            "rollbackd_escalation_mail_failed_attempts",
            "Delivery attempts the SMTP server did not accept (each is retried)")
        sent, queued, failing, failed = db.execute(
            "SELECT SUM(sent_at IS NOT NULL), SUM(sent_at IS NULL),"
            " SUM(sent_at IS NULL AND last_error IS NOT NULL),"
            " SUM(attempts - (sent_at IS NOT NULL)) FROM outbox").fetchone()
        for state, n in (("sent", sent), ("queued", queued), ("failing", failing)):
            mails.add_metric([state], n or 0)
        failures.add_metric([], max(0, failed or 0))
        yield mails
        yield failures

    def _backups(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "rollbackd_backup_newest_verified_timestamp_seconds",
            "Creation time of the newest verified backup; its age is time() minus this",
            labels=["target", "kind"])
        newest: dict[tuple[str, str], float] = {}
        # Compared after parsing: ISO text with different offsets does not sort as text.
        for target, kind, created in db.execute(
                "SELECT target, kind, created_at FROM backups"
                " WHERE verified_at IS NOT NULL AND verified_at != ''"):
            at = _ts(created)
            if at is not None and at > newest.get((target, kind), float("-inf")):
                newest[(target, kind)] = at
        for (target, kind), at in sorted(newest.items()):
            g.add_metric([target, kind], at)
        yield g
        yield from self._restore_tests(db)

    def _restore_tests(self, db: sqlite3.Connection) -> Iterator[Metric]:
        passed = GaugeMetricFamily(
            "rollbackd_backup_restore_test_timestamp_seconds",
            "When a scheduled test restore of one of the target's backups last passed",
            labels=["target", "kind"])
        failed = GaugeMetricFamily(
            "rollbackd_backup_restore_test_failed_timestamp_seconds",
            "When a scheduled test restore of one of the target's backups last failed (that "
            "backup is marked unusable)", labels=["target", "kind"])
        last: dict[bool, dict[tuple[str, str], float]] = {True: {}, False: {}}
        for target, kind, tested, error in db.execute(
                "SELECT target, kind, restore_tested_at, restore_test_error FROM backups"
                " WHERE restore_tested_at IS NOT NULL"):
            at, seen = _ts(tested), last[error is None]
            if at is not None and at > seen.get((target, kind), float("-inf")):
                seen[(target, kind)] = at
        for family, ok in ((passed, True), (failed, False)):
            for (target, kind), at in sorted(last[ok].items()):
                family.add_metric([target, kind], at)
            yield family

    def _ledger(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        info = InfoMetricFamily("rollbackd_known_good_version",
                                "The target's newest known-good version (rollbacks go to one)",
                                labels=["target"])
        since = GaugeMetricFamily("rollbackd_known_good_timestamp_seconds",
                                  "When the newest known-good version earned the title",
                                  labels=["target"])
        newest: dict[str, tuple[datetime, str, datetime]] = {}
        for target, ver, first_text, good_text in db.execute(
                "SELECT target, version, first_seen, known_good_at FROM ledger"
                " WHERE known_good_at IS NOT NULL AND bad_at IS NULL"):
            first, good = _dt(first_text), _dt(good_text)
            if first and good and (target not in newest or first > newest[target][0]):
                newest[target] = (first, ver, good)
        for target, (_, ver, good) in sorted(newest.items()):
            info.add_metric([target], {"version": ver})
            since.add_metric([target], good.timestamp())
        yield info
        yield since

    def _failures(self, db: sqlite3.Connection, now: datetime) -> Iterator[Metric]:
        g = GaugeMetricFamily("rollbackd_rollback_last_failure_timestamp_seconds",
                              "When a rollback of the target last failed", labels=["target"])
        # The journal writes every timestamp as UTC ISO text, so MAX() on the text is the latest.
        last = {target: at for target, text in db.execute(
                "SELECT i.target, MAX(t.at) FROM timeline t JOIN incidents i ON i.id = t.incident_id"
                " WHERE t.event = 'failed' GROUP BY i.target")
                if (at := _ts(text)) is not None}
        for target, at in sorted(last.items()):
            g.add_metric([target], at)
        yield g

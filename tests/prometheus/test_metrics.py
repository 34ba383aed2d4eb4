"""The daemon's metrics on a fresh registry each: live instruments, journal and monitor collectors."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rollbackd.daemon.alerts.rules import rules_text
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import JournalCollector, Metrics, MonitorCollector
from rollbackd.daemon.selfcheck import SelfCheck
from rollbackd.policies.breaker import Breaker, BreakerMode
from rollbackd.policies.debounce import ProbeHealth
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.overrides import Override, OverrideKind
from rollbackd.policies.settings import PolicySettings
from rollbackd.probes.base import ProbeSettings
from rollbackd.probes.observation import Symptom


def now() -> datetime:
    return datetime.now(UTC)


POLICIES = {"grading": PolicySettings(breaker_reset=1800), "billing": PolicySettings()}


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


def collect(registry: CollectorRegistry, journal: Journal) -> CollectorRegistry:
    registry.register(JournalCollector(journal.path, lambda: POLICIES))
    return registry


# -- live instruments -------------------------------------------------------------------------

def test_time_to_detect_is_observed_from_the_onset(registry: CollectorRegistry) -> None:
    Metrics(registry).detected("grading", "app_down", now() - timedelta(seconds=12))
    total = registry.get_sample_value("rollbackd_time_to_detect_seconds_sum",
                                      {"target": "grading", "incident_class": "app_down"})
    assert total is not None and 12 <= total < 15


def test_time_to_recover_lands_in_its_bucket(registry: CollectorRegistry) -> None:
    Metrics(registry).recovered("grading", "app_down", now() - timedelta(seconds=45))
    assert registry.get_sample_value(
        "rollbackd_time_to_recover_seconds_bucket",
        {"target": "grading", "incident_class": "app_down", "le": "60.0"}) == 1


def test_scheduler_run_stamps_the_last_run(registry: CollectorRegistry) -> None:
    Metrics(registry).scheduler_ran(0.02)
    stamp = registry.get_sample_value("rollbackd_scheduler_last_run_timestamp_seconds")
    assert stamp is not None and abs(stamp - time.time()) < 5


def test_lag_buckets_reach_past_the_alert_threshold(registry: CollectorRegistry) -> None:
    # The lagging alert fires above 5 s: a 7 s lag must land below +Inf to be seen.
    Metrics(registry).scheduler_ran(7.0)
    assert registry.get_sample_value("rollbackd_scheduler_lag_seconds_bucket", {"le": "10.0"}) == 1


def test_process_metrics_are_on_the_explicit_registry(registry: CollectorRegistry) -> None:
    Metrics(registry)
    assert registry.get_sample_value("process_start_time_seconds") is not None


def test_build_info(registry: CollectorRegistry) -> None:
    Metrics(registry)
    text = generate_latest(registry).decode()
    assert re.search(r'^rollbackd_build_info\{version="[^"]+"\} 1\.0$', text, re.M)


def test_webhook_counters_start_at_zero(registry: CollectorRegistry) -> None:
    Metrics(registry)
    assert registry.get_sample_value("rollbackd_webhook_alerts_unmatched_total") == 0


# -- journal collector ------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "opened_ago", "value"), [
    pytest.param(BreakerMode.CLOSED, None, 0, id="closed"),
    pytest.param(BreakerMode.OPEN, timedelta(minutes=5), 2, id="open"),
    pytest.param(BreakerMode.OPEN, timedelta(hours=1), 1, id="open-past-reset-is-half-open"),
])
def test_breaker_state(registry: CollectorRegistry, journal: Journal, mode: BreakerMode,
                       opened_ago: timedelta | None, value: int) -> None:
    at = now()
    opened = at - opened_ago if opened_ago else None
    journal.breakers.save("grading", "deployment_rollback", Breaker(mode, (at,), opened))
    assert collect(registry, journal).get_sample_value(
        "rollbackd_breaker_state", {"target": "grading", "plan": "deployment_rollback"}) == value


def test_open_incidents_by_state_with_their_detection_time(registry: CollectorRegistry,
                                                           journal: Journal) -> None:
    journal.incidents.open("grading", "auth_broken", "login 401", now(), {},
                           state="awaiting_approval")
    journal.incidents.open("billing", "app_down", "down", now(), {}, state="resolved")
    collect(registry, journal)
    assert registry.get_sample_value("rollbackd_incidents_open", {
        "target": "grading", "incident_class": "auth_broken", "state": "awaiting_approval"}) == 1
    stamp = registry.get_sample_value("rollbackd_incident_detected_timestamp_seconds", {
        "target": "grading", "incident_class": "auth_broken", "state": "awaiting_approval"})
    assert stamp is not None and abs(stamp - time.time()) < 5


def test_closed_incidents_are_not_open(registry: CollectorRegistry, journal: Journal) -> None:
    journal.incidents.open("billing", "app_down", "down", now(), {}, state="resolved")
    assert collect(registry, journal).get_sample_value("rollbackd_incidents_open", {
        "target": "billing", "incident_class": "app_down", "state": "resolved"}) is None


def test_pause_of_one_target(registry: CollectorRegistry, journal: Journal) -> None:
    journal.overrides.add(Override(OverrideKind.PAUSE, "grading", now() + timedelta(hours=1),
                                   "migrating"))
    collect(registry, journal)
    assert registry.get_sample_value("rollbackd_override_active",
                                     {"target": "grading", "kind": "pause"}) == 1
    assert registry.get_sample_value("rollbackd_override_active",
                                     {"target": "billing", "kind": "pause"}) == 0


def test_global_maintenance_applies_to_every_target(registry: CollectorRegistry,
                                                    journal: Journal) -> None:
    journal.overrides.add(Override(OverrideKind.MAINTENANCE, None, now() + timedelta(hours=1), "dc"))
    assert collect(registry, journal).get_sample_value(
        "rollbackd_override_active", {"target": "billing", "kind": "maintenance"}) == 1


def test_expired_override_is_off(registry: CollectorRegistry, journal: Journal) -> None:
    journal.overrides.add(Override(OverrideKind.SILENCE, "grading", now() - timedelta(seconds=1), "x"))
    assert collect(registry, journal).get_sample_value(
        "rollbackd_override_active", {"target": "grading", "kind": "silence"}) == 0


def _mails(journal: Journal) -> None:
    for i in range(3):
        journal.mail.enqueue(f"m{i}", None, ["oncall@example.com"], "s", "b")
    ids = [r[0] for r in journal.db.execute("SELECT id FROM outbox ORDER BY id")]
    journal.mail.sent(ids[0])
    journal.mail.failed(ids[1], "421 try later", now())
    journal.mail.failed(ids[1], "421 try later", now())


def test_failing_mails(registry: CollectorRegistry, journal: Journal) -> None:
    _mails(journal)
    assert collect(registry, journal).get_sample_value(
        "rollbackd_escalation_mails", {"state": "failing"}) == 1


def test_failed_mail_attempts_count(registry: CollectorRegistry, journal: Journal) -> None:
    _mails(journal)
    assert collect(registry, journal).get_sample_value(
        "rollbackd_escalation_mail_failed_attempts_total") == 2


def test_newest_verified_backup(registry: CollectorRegistry, journal: Journal) -> None:
    journal.backups.add("grading", "database", "/b/1", 1, "x", 0.1, {}, verified=True)
    journal.db.execute("UPDATE backups SET created_at = ?",
                       ((now() - timedelta(hours=30)).isoformat(),))
    journal.backups.add("grading", "database", "/b/2", 1, "y", 0.1, {}, verified=True)
    journal.backups.add("grading", "database", "/b/3", 1, "z", 0.1, {}, verified=False)
    stamp = collect(registry, journal).get_sample_value(
        "rollbackd_backup_newest_verified_timestamp_seconds",
        {"target": "grading", "kind": "database"})
    assert stamp is not None and abs(stamp - time.time()) < 5


def test_restore_test_times_passed_and_failed(registry: CollectorRegistry,
                                             journal: Journal) -> None:
    store = BackupStore(journal, journal.path.parent / "backups", "grading")
    ids = [journal.backups.add("grading", "database", f"/b/{n}", 1, "x", 0.1, {},
                               verified=True) for n in range(3)]
    b = [store.get(i) for i in ids]
    assert None not in b
    store.record_restore_test(b[0], None, now() - timedelta(days=2))  # type: ignore[arg-type]
    store.record_restore_test(b[1], None, now() - timedelta(hours=1))  # type: ignore[arg-type]
    store.record_restore_test(b[2], "does not restore", now())  # type: ignore[arg-type]
    collect(registry, journal)
    labels = {"target": "grading", "kind": "database"}
    passed = registry.get_sample_value("rollbackd_backup_restore_test_timestamp_seconds", labels)
    failed = registry.get_sample_value(
        "rollbackd_backup_restore_test_failed_timestamp_seconds", labels)
    assert passed is not None and abs(passed - (time.time() - 3600)) < 5
    assert failed is not None and abs(failed - time.time()) < 5


def test_restore_test_counter_starts_at_zero(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.restore_tests.labels("grading", "failed").inc()
    assert registry.get_sample_value("rollbackd_backup_restore_tests_total",
                                     {"target": "grading", "result": "failed"}) == 1


def test_known_good_version_info(registry: CollectorRegistry, journal: Journal) -> None:
    t = now() - timedelta(hours=3)
    journal.ledger.save("grading", LedgerEntry("aaa111", t, t, t + timedelta(minutes=10)))
    journal.ledger.save("grading", LedgerEntry("bbb222", t + timedelta(hours=1), t,
                                               t + timedelta(hours=1, minutes=10)))
    journal.ledger.save("grading", LedgerEntry("ccc333", t + timedelta(hours=2)))  # not yet good
    journal.ledger.mark_bad("grading", "ddd444", "rolled back")
    assert collect(registry, journal).get_sample_value(
        "rollbackd_known_good_version_info", {"target": "grading", "version": "bbb222"}) == 1


def test_last_rollback_failure(registry: CollectorRegistry, journal: Journal) -> None:
    inc = journal.incidents.open("grading", "app_down", "down", now(), {})
    journal.incidents.update(inc, state="remediating")
    journal.incidents.update(inc, "failed", "restart exited 1", state="failed")
    stamp = collect(registry, journal).get_sample_value(
        "rollbackd_rollback_last_failure_timestamp_seconds", {"target": "grading"})
    assert stamp is not None and abs(stamp - time.time()) < 5


def test_readable_journal(registry: CollectorRegistry, journal: Journal) -> None:
    assert collect(registry, journal).get_sample_value("rollbackd_journal_readable") == 1


def test_missing_journal_never_fails_a_scrape(registry: CollectorRegistry, tmp_path: Path) -> None:
    registry.register(JournalCollector(tmp_path / "nope.sqlite3", lambda: POLICIES))
    generate_latest(registry)
    assert registry.get_sample_value("rollbackd_journal_readable") == 0


def test_garbage_journal_never_fails_a_scrape(registry: CollectorRegistry, tmp_path: Path) -> None:
    bad = tmp_path / "journal.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    registry.register(JournalCollector(bad, lambda: POLICIES))
    assert registry.get_sample_value("rollbackd_journal_readable") == 0


def test_broken_policy_source_costs_only_its_sections(registry: CollectorRegistry,
                                                      journal: Journal) -> None:
    def broken() -> dict[str, PolicySettings]:
        raise RuntimeError("config half reloaded")

    journal.mail.enqueue("m", None, ["a@b"], "s", "b")
    registry.register(JournalCollector(journal.path, broken))
    assert registry.get_sample_value("rollbackd_escalation_mails", {"state": "queued"}) == 1


# -- monitor collector ------------------------------------------------------------------------

@dataclass
class FakeMonitor:
    health: dict[str, ProbeHealth] = field(default_factory=dict)
    settings: dict[str, ProbeSettings] = field(default_factory=dict)


def _monitors() -> dict[str, FakeMonitor]:
    slow = ProbeHealth(failing=True, symptom=Symptom.SLOW)
    return {"grading": FakeMonitor(
        {"health": ProbeHealth(passing=True), "latency": slow, "p95": slow},
        {p: ProbeSettings(kind="http_health", interval=5) for p in ("health", "latency", "p95")})}


def test_symptoms_per_target(registry: CollectorRegistry) -> None:
    registry.register(MonitorCollector(_monitors))
    assert registry.get_sample_value("rollbackd_symptoms",
                                     {"target": "grading", "symptom": "slow"}) == 2


def test_debounced_probe_state(registry: CollectorRegistry) -> None:
    registry.register(MonitorCollector(_monitors))
    assert registry.get_sample_value("rollbackd_probe_failing",
                                     {"target": "grading", "probe": "health"}) == 0


def test_probe_interval(registry: CollectorRegistry) -> None:
    registry.register(MonitorCollector(_monitors))
    assert registry.get_sample_value("rollbackd_probe_interval_seconds",
                                     {"target": "grading", "probe": "p95"}) == 5


def test_monitor_source_failing_never_fails_a_scrape(registry: CollectorRegistry) -> None:
    def broken() -> dict[str, FakeMonitor]:
        raise RuntimeError("reloading")

    registry.register(MonitorCollector(broken))
    assert generate_latest(registry).count(b"rollbackd_symptoms") == 2  # HELP and TYPE only


# -- what the rules rely on ---------------------------------------------------------------------

def test_every_metric_the_rules_use_is_exported(registry: CollectorRegistry,
                                                journal: Journal, tmp_path: Path) -> None:
    m = Metrics(registry)
    m.scheduler_ran(0.1)
    m.backups_failed.labels("grading", "database")  # attach_backups starts it at zero
    SelfCheck(tmp_path, registry)  # the daemon registers its self_degraded gauge at start
    collect(registry, journal)
    registry.register(MonitorCollector(_monitors))
    exported = {s.name for fam in registry.collect() for s in fam.samples}
    used = set(re.findall(r"\b(rollbackd_[a-z_]+)", rules_text())) - {
        # Samples that appear once the journal has the rows (asserted above, one by one).
        "rollbackd_breaker_state", "rollbackd_rollback_last_failure_timestamp_seconds",
        "rollbackd_incident_detected_timestamp_seconds",
        "rollbackd_backup_newest_verified_timestamp_seconds",
        "rollbackd_backup_restore_test_timestamp_seconds",
        "rollbackd_backup_restore_test_failed_timestamp_seconds",
        # Fed by the recovery drills (rollbackd/daemon/metrics/drills.py), not by this module.
        "rollbackd_drill_last_success_timestamp_seconds", "rollbackd_drill_overdue",
    }
    assert used - exported == set()

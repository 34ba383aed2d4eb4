"""Routing as a table: who gets each mail by class, event, condition and tier; and its config."""

from __future__ import annotations

from typing import get_args

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.escalation.notices import ROUTE_AS, Notice, NoticeKind
from rollbackd.daemon.escalation.routing import (
    MailFacts,
    conditions,
    next_tier,
    recipients,
    routed_roles,
    tier_recipients,
)
from rollbackd.daemon.escalation.settings import Contact, EscalationSettings, EventKind, RoleNames, Route
from rollbackd.policies.decision import KEY_DISASTER

ONCALL, DBA, DEVOPS, CTO, LEAD = ("oncall@x.org", "dba@x.org", "devops@x.org", "cto@x.org",
                                  "lead@x.org")
CONTACTS = {
    "oncall": Contact(emails=[ONCALL]),
    "dba": Contact(emails=[DBA]),
    "devops": Contact(emails=[DEVOPS]),
    "emergency": Contact(emails=[CTO]),
}
DEFAULT = EscalationSettings()
NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(("cls", "event", "conds", "expected"), [
    pytest.param("data_corruption", "opened", NONE, {DBA, ONCALL}, id="data_corruption"),
    pytest.param("auth_broken", "resolved", NONE, {DBA, ONCALL}, id="auth_broken"),
    pytest.param("key_invalid", "opened", NONE, {DBA, ONCALL}, id="key_invalid"),
    pytest.param("app_down", "opened", NONE, {DEVOPS, ONCALL}, id="app_down"),
    pytest.param("perf_degraded", "started", NONE, {DEVOPS, ONCALL}, id="perf_degraded"),
    pytest.param("dependency_down", "opened", NONE, {ONCALL}, id="dependency_down"),
    pytest.param("app_down", "failed", frozenset({"rollback_failed"}), {DEVOPS, ONCALL, CTO},
                 id="failed-rollback-adds-emergency"),
    pytest.param("app_down", "opened", frozenset({"breaker_open"}), {DEVOPS, ONCALL, CTO},
                 id="breaker-open-adds-emergency"),
    pytest.param("key_invalid", "opened", frozenset({"key_disaster"}), {DBA, ONCALL, CTO},
                 id="key-disaster-adds-emergency"),
    pytest.param(None, "redeploy", NONE, {DEVOPS, ONCALL}, id="redeploy-warning"),
    pytest.param(None, "other", NONE, {ONCALL}, id="unrouted-falls-back-to-oncall"),
    pytest.param(None, "backup", NONE, {DBA}, id="failed-backup-to-the-dba"),
    pytest.param(None, "probe_account", NONE, {ONCALL}, id="probe-account-to-oncall"),
])
def test_default_routing(cls: str | None, event: str, conds: frozenset[str],
                         expected: set[str]) -> None:
    facts = MailFacts(event, cls, conds)  # type: ignore[arg-type]
    got = recipients(DEFAULT, CONTACTS, facts)
    assert set(got) == expected
    assert len(got) == len(set(got))  # each address once


@pytest.mark.parametrize(("kind", "route_as"), [
    pytest.param(NoticeKind.OPENED, "opened", id="opened"),
    pytest.param(NoticeKind.HELD, "held", id="held-step"),
    pytest.param(NoticeKind.TIER, "escalated", id="tier"),
    pytest.param(NoticeKind.REDEPLOY, "redeploy", id="redeploy"),
    pytest.param(NoticeKind.BACKUP, "backup", id="backup"),
    pytest.param(NoticeKind.PROBE_ACCOUNT, "probe_account", id="probe-account"),
])
def test_notice_routes_as_its_kind(kind: NoticeKind, route_as: str) -> None:
    """Routing keys on the notice's type; the key (a step id, a tier) never changes it."""
    assert Notice(kind, "s", "b", 12, key="7").route_as == route_as
    assert Notice(kind, "s", "b", 12).route_as == route_as


def test_every_notice_kind_routes_as_a_configurable_event() -> None:
    assert set(ROUTE_AS) == set(NoticeKind)
    assert set(ROUTE_AS.values()) <= set(get_args(EventKind))


@pytest.mark.parametrize(("event", "reason", "failed", "breaker", "expected"), [
    pytest.param("opened", "app_down: x", False, False, NONE, id="nothing"),
    pytest.param("failed", "app_down: x", False, False, {"rollback_failed"}, id="failed-event"),
    pytest.param("escalated", "x", True, False, {"rollback_failed"}, id="failed-earlier"),
    pytest.param("opened", f"key_invalid: bad; {KEY_DISASTER}: escalating", False, False,
                 {"key_disaster"}, id="key-disaster"),
    pytest.param("opened", "x", False, True, {"breaker_open"}, id="breaker"),
])
def test_conditions(event: str, reason: str, failed: bool, breaker: bool,
                    expected: set[str]) -> None:
    assert conditions(event, reason, failed, breaker) == expected  # type: ignore[arg-type]


TIERED = {
    "oncall": Contact(emails=[ONCALL]),
    "devops": Contact(emails=[DEVOPS]),
    "dba": Contact(emails=[DBA], tier=2),
    "lead": Contact(emails=[LEAD], tier=2),
    "emergency": Contact(emails=[CTO], tier=3),
}


@pytest.mark.parametrize(("cls", "tier", "paged", "expected"), [
    pytest.param("app_down", 1, (), [DEVOPS, ONCALL], id="tier1-routed-only"),
    pytest.param("data_corruption", 1, (), [ONCALL], id="tier2-dba-waits"),
    pytest.param("data_corruption", 2, (LEAD,), [DBA, ONCALL, LEAD], id="after-tier2"),
    pytest.param("app_down", 3, (LEAD, CTO), [DEVOPS, ONCALL, LEAD, CTO], id="paged-hear-rest"),
])
def test_tiers_filter_routed_contacts(cls: str, tier: int, paged: tuple[str, ...],
                                      expected: list[str]) -> None:
    assert list(recipients(DEFAULT, TIERED, MailFacts("resolved", cls), tier, paged)) == expected


@pytest.mark.parametrize(("cls", "tier", "expected"), [
    pytest.param("data_corruption", 2, [DBA], id="routed-role-in-tier"),
    pytest.param("app_down", 2, [DBA, LEAD], id="nobody-routed-in-tier-pages-the-tier"),
    pytest.param("app_down", 3, [CTO], id="top"),
])
def test_tier_recipients(cls: str, tier: int, expected: list[str]) -> None:
    assert list(tier_recipients(DEFAULT, TIERED, MailFacts("escalated", cls), tier)) == expected


def test_next_tier_skips_empty_tiers() -> None:
    contacts = {"a": Contact(emails=[ONCALL]), "b": Contact(emails=[CTO], tier=4)}
    assert next_tier(contacts, 1) == 4
    assert next_tier(contacts, 4) is None


def test_renamed_roles_and_custom_routes() -> None:
    settings = EscalationSettings(
        roles=RoleNames(emergency="cto", oncall="primary"),
        routes=(Route(classes=["app_down"], roles=["oncall", "sre"]),  # type: ignore[list-item]
                Route(when=["rollback_failed"], roles=["emergency"])),
    )
    contacts = {"primary": Contact(emails=[ONCALL]), "sre": Contact(emails=["sre@x.org"]),
                "cto": Contact(emails=[CTO])}
    assert routed_roles(settings, MailFacts("opened", "app_down")) == ("primary", "sre")
    got = recipients(settings, contacts,
                     MailFacts("failed", "app_down", frozenset({"rollback_failed"})))
    assert got == (ONCALL, "sre@x.org", CTO)
    # A class no rule names still reaches the (renamed) on-call role.
    assert recipients(settings, contacts, MailFacts("opened", "auth_broken")) == (ONCALL,)


def test_no_contacts_no_recipients() -> None:
    assert recipients(DEFAULT, {}, MailFacts("opened", "app_down")) == ()


# --- config ------------------------------------------------------------------------------------

PROBE = """
[targets.web.probes.health]
kind = "http_health"
url = "http://127.0.0.1:9/health"
"""


def test_escalation_config_parses() -> None:
    cfg = parse_config("""
[contacts.oncall]
emails = ["oncall@example.com"]
[contacts.cto]
emails = ["cto@example.com"]
tier = 2

[escalation]
ack_timeout = ["5m", "30m"]
storm_window = "2m"
storm_max = 10
digest_delay = "30s"
roles = { emergency = "cto" }

[[escalation.routes]]
classes = ["app_down"]
events = ["failed"]
roles = ["emergency"]
""" + PROBE)
    esc = cfg.escalation
    assert esc.ack_timeout == (300.0, 1800.0)
    assert [esc.timeout_for(t) for t in (1, 2, 3)] == [300.0, 1800.0, 1800.0]
    assert (esc.storm_window, esc.storm_max, esc.digest_delay) == (120.0, 10, 30.0)
    assert esc.role("emergency") == "cto"
    assert len(esc.routes) == 1
    assert cfg.contacts["cto"].tier == 2


def test_one_ack_timeout_for_every_tier() -> None:
    esc = parse_config('[escalation]\nack_timeout = "90s"\n' + PROBE).escalation
    assert esc.ack_timeout == (90.0,)
    assert esc.timeout_for(5) == 90.0


@pytest.mark.parametrize(("toml", "error"), [
    pytest.param('[escalation]\nack_timeout = ["5m", "0s"]', "escalation.ack_timeout[1]: must be "
                 "greater than 0", id="ack-timeout"),
    pytest.param("[escalation]\nstorm_max = 0", "escalation.storm_max: must be at least 1",
                 id="storm-max"),
    pytest.param("[escalation]\nstorms = 1", "escalation.storms: unknown key", id="unknown"),
    pytest.param('[contacts.oncall]\nemails = ["a@b"]\ntier = 0',
                 "contacts.oncall.tier: must be at least 1", id="tier"),
    pytest.param('[[escalation.routes]]\nclasses = ["app_dwn"]\nroles = ["oncall"]',
                 "escalation.routes[0].classes[0]", id="class"),
    pytest.param('[[escalation.routes]]\nroles = []', "escalation.routes[0].roles: must not be "
                 "empty", id="no-roles"),
    pytest.param('[[escalation.routes]]\nwhen = ["sometimes"]\nroles = ["x"]',
                 "escalation.routes[0].when[0]", id="condition"),
])
def test_escalation_config_errors_name_the_key(toml: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(toml + "\n" + PROBE, "r.toml")
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors

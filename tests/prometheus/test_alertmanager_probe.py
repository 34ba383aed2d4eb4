"""The passive alertmanager probe on its own: matching, firing and resolving, forgetting."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from rollbackd.daemon.alerts.payload import parse
from rollbackd.probes.alertmanager import AlertmanagerProbe, AlertmanagerSettings, AlertSignal
from rollbackd.probes.observation import Status, Symptom
from tests.prometheus.alertmanager import ERRORS, LATENCY, alert, notification

STARTS = datetime(2024, 5, 1, 10, 45, 2, tzinfo=UTC)


def make(**settings: object) -> AlertmanagerProbe:
    base: dict[str, object] = {"match": {"service": "grading"}}
    return AlertmanagerProbe("alerts", AlertmanagerSettings.model_validate({**base, **settings}))


def signal(labels: dict[str, str], firing: bool = True, fp: str | None = None) -> AlertSignal:
    return AlertSignal(fp or labels["alertname"], firing, labels, {}, STARTS)


@pytest.mark.parametrize(("settings", "labels", "matches"), [
    pytest.param({}, LATENCY, True, id="equality"),
    pytest.param({}, {"alertname": "X", "service": "billing"}, False, id="other-value"),
    pytest.param({}, {"alertname": "X"}, False, id="label-missing"),
    pytest.param({"match_re": {"alertname": "Grading(5xx|Errors)"}}, ERRORS, True, id="regex"),
    pytest.param({"match_re": {"alertname": "Grading5"}}, ERRORS, False,
                 id="regex-is-anchored"),
    pytest.param({"match": {}, "match_re": {"severity": "page|critical"}}, LATENCY, True,
                 id="regex-only"),
])
def test_matching(settings: dict[str, object], labels: dict[str, str], matches: bool) -> None:
    assert make(**settings).matches(labels) is matches


async def test_nothing_firing_passes() -> None:
    obs = await make().check()
    assert obs.ok and obs.metrics["alerts_firing"] == 0


async def test_firing_fails_with_the_configured_symptom() -> None:
    p = make(symptom="server_error")
    p.receive(signal(ERRORS))
    obs = await p.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SERVER_ERROR)
    assert obs.detail == "alert Grading5xx firing since 2024-05-01 10:45:02 UTC."


async def test_several_firing_are_named() -> None:
    p = make()
    p.receive(signal(LATENCY))
    p.receive(signal(ERRORS))
    obs = await p.check()
    assert obs.detail.endswith("(and 1 more: GradingHighLatency).") and \
        obs.metrics["alerts_firing"] == 2


async def test_resolved_clears_only_its_own_alert() -> None:
    p = make()
    p.receive(signal(LATENCY))
    p.receive(signal(ERRORS))
    p.receive(signal(LATENCY, firing=False))
    assert [a.name for a in p.firing] == ["Grading5xx"]


async def test_an_alert_not_repeated_is_forgotten() -> None:
    p = make(forget_after="200ms")
    p.receive(signal(LATENCY))
    assert not (await p.check()).ok
    await asyncio.sleep(0.3)
    assert (await p.check()).ok


def test_payload_firing_and_resolved_signals() -> None:
    note = parse(json.dumps(notification(alert(LATENCY), alert(ERRORS, status="resolved")))
                 .encode())
    now = datetime.now(UTC)
    assert [(a.signal(now).name, a.signal(now).firing) for a in note.alerts] == [
        ("GradingHighLatency", True), ("Grading5xx", False)]

"""A drill passes only when the target is exactly as it was: another commit, another schema
revision or fewer rows after the repair end the scenario failed, with the difference named."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rollbackd.daemon.drills import procedure
from rollbackd.daemon.drills.health import Snapshot
from rollbackd.daemon.drills.procedure import DrillContext, _judge
from rollbackd.daemon.drills.record import FAILED, PASSED, DrillRun, ScenarioRun, now_utc
from rollbackd.daemon.journal.store import Journal
from rollbackd.policies.lifecycle import State

BEFORE = Snapshot(version="a" * 40, revision="0003", key="fp1",
                  rows={"users": 12, "grades": 40}, probes={"health": "ok", "login": "ok"},
                  login="ok")


class Tidy:
    async def cleanup(self) -> str:
        return "nothing to tidy"


@pytest.mark.parametrize(("after", "named"), [
    pytest.param(replace(BEFORE, version="b" * 40), f"version {'a' * 12} before, {'b' * 12} after",
                 id="another-commit"),
    pytest.param(replace(BEFORE, revision="0002"), "schema revision 0003 before, 0002 after",
                 id="another-revision"),
    pytest.param(replace(BEFORE, rows={"users": 12, "grades": 39}),
                 "grades: 40 rows before, 39 after", id="fewer-rows"),
    pytest.param(replace(BEFORE, rows={"users": 12}), "grades: 40 rows before, no table after",
                 id="a-table-gone"),
    pytest.param(replace(BEFORE, key="fp2"), "key fp1 before, fp2 after", id="another-key"),
])
async def test_a_target_left_different_fails_the_drill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: Snapshot, named: str) -> None:
    result = await judge(tmp_path, monkeypatch, after)
    assert result.result == FAILED
    assert result.reason == "the target is not exactly as healthy as before"
    assert result.differences == [named]


async def test_the_same_target_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = await judge(tmp_path, monkeypatch, replace(BEFORE))
    assert (result.result, result.differences) == (PASSED, [])


async def judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: Snapshot) -> ScenarioRun:
    """`_judge` of a resolved app_down incident, with the target found as `after`."""
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        inc_id = journal.incidents.open("web", "app_down", "app_down: x", None, {})
        journal.incidents.update(inc_id, state=State.REMEDIATING.value)
        journal.incidents.update(inc_id, state=State.VERIFYING.value)
        journal.incidents.update(inc_id, state=State.RESOLVED.value, closed_at=now_utc(),
                                 verified_at=now_utc())
        inc = journal.incidents.get(inc_id)
        assert inc is not None

        async def found(_: Any) -> Snapshot:
            return after

        monkeypatch.setattr(procedure, "snapshot", found)
        s = ScenarioRun("app_down", onset=now_utc() - timedelta(seconds=5))
        ctx = DrillContext(DrillRun(1, "web", "test", [s]), journal, lambda: None,
                           None, None)  # type: ignore[arg-type]
        await _judge(ctx, s, object(), inc, Tidy(), BEFORE)  # type: ignore[arg-type]
        return s
    finally:
        journal.close()

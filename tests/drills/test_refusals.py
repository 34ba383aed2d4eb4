"""Drills refuse before they break anything: a target not marked staging, a target the daemon
would not repair now (paused), an unknown scenario, a scenario without an injector."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import closing

import pytest

from tests.conftest import DaemonProcess
from tests.drills.conftest import Staging

pytestmark = pytest.mark.e2e


def incidents(d: DaemonProcess) -> int:
    with closing(d.db()) as db:
        return int(db.execute("SELECT count(*) FROM incidents").fetchone()[0])


def test_a_target_not_marked_staging_is_refused_with_a_clear_error(
        start_staging: Callable[..., Staging]) -> None:
    st = start_staging(staging=False)
    good = st.ws.head()
    reply = st.d.ctl("drill", target="grading", scenario="app_down")
    assert reply["ok"] is False and reply["code"] == "not_staging", reply
    assert "grading is not marked staging" in reply["error"]
    assert "staging = true" in reply["error"]
    res = subprocess.run([sys.executable, "-m", "rollbackd.daemon.control.ctl", "--socket",
                          str(st.d.socket), "drill", "grading"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1 and "not marked staging" in res.stderr, res
    # Nothing was touched: no incident, the same version, no drill report.
    assert incidents(st.d) == 0 and st.ws.head() == good
    assert not list((st.d.state_dir / "reports").glob("drill-*"))
    audit = st.d.result("audit")
    assert [a["outcome"] for a in audit if a["cmd"] == "drill"] == ["error:not_staging"] * 2


def test_a_paused_target_is_refused_before_the_fault_goes_in(staging: Staging) -> None:
    st = staging
    good = st.ws.head()
    st.d.result("pause", target="grading", reason="migrating", **{"for": "1h"})
    run = st.drill("app_down")
    assert run["state"] == "refused", run
    (s,) = run["scenarios"]
    assert s["result"] == "refused" and "under pause" in s["reason"], s
    assert s["onset"] is None and s["injected"] == ""
    assert incidents(st.d) == 0 and st.ws.head() == good
    # Refused is not passed: the schedule's last success stays empty.
    assert st.d.result("drills")["targets"][0]["last_success"] is None


def test_unknown_or_unconfigured_scenarios_are_refused(
        start_staging: Callable[..., Staging]) -> None:
    st = start_staging(injectors={"key_invalid": ""}, drills='scenarios = ["app_down"]\n')
    reply = st.d.ctl("drill", target="grading", scenario="key_invalid")
    assert reply["code"] == "not_configured", reply
    assert "[targets.grading.drills.injectors.key_invalid]" in reply["error"]
    reply = st.d.ctl("drill", target="grading", scenario="meltdown")
    assert reply["code"] == "bad_args" and "unknown scenario 'meltdown'" in reply["error"]
    reply = st.d.ctl("drill", target="nowhere")
    assert reply["code"] == "not_found"
    assert incidents(st.d) == 0

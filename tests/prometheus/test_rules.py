"""The shipped alerting rules: valid for promtool, unit-tested with promtool, printed by the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.resources import as_file, files
from pathlib import Path

from rollbackd.daemon.alerts.rules import RULES_NAME, rules_text

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
UNIT_TESTS = [HERE / "rules_test.yml", HERE / "rules_test_daily.yml"]
# What the issue asks an operator to be alerted on, by the rule that does it.
REQUIRED = {"RollbackdDown", "RollbackdNotScraped", "RollbackdSchedulerStalled",
            "RollbackdBreakerOpen", "RollbackdRollbackFailed", "RollbackdIncidentAwaitingApproval",
            "RollbackdEscalationMailFailing", "RollbackdBackupStale", "RollbackdDrillOverdue"}


def alert_names(text: str) -> set[str]:
    return set(re.findall(r"^\s*- alert: (\w+)\s*$", text, re.M))


def test_promtool_check_rules(promtool: str) -> None:
    with as_file(files("rollbackd.daemon.alerts").joinpath(RULES_NAME)) as path:
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_names(rules_text()))} rules found" in out.stdout


def test_promtool_test_rules(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", *map(str, UNIT_TESTS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_rules_cover_every_required_alert() -> None:
    assert REQUIRED <= alert_names(rules_text())


def test_every_alert_has_a_firing_unit_test() -> None:
    tested = {name for spec in UNIT_TESTS
              for name in re.findall(r"^\s+alertname: (\w+)\s*$", spec.read_text(), re.M)}
    assert alert_names(rules_text()) - tested == set()


def test_unit_tests_load_the_shipped_file() -> None:
    for spec in UNIT_TESTS:
        assert "../../daemon/alerts/rollbackd.rules.yml" in spec.read_text()
    assert (HERE / "../../daemon/alerts/rollbackd.rules.yml").resolve().read_text() == rules_text()


def test_rollbackd_rules_prints_the_file() -> None:
    out = subprocess.run([sys.executable, "-m", "rollbackd.daemon.cli", "rules"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == rules_text()


def test_rules_file_is_package_data() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["*"]
    assert "*.yml" in globs

"""check-config beyond validation: every error at once, warnings, --strict, and missing extras."""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.config_check import config_warnings, missing_extras
from tests.config.test_cli import run

PROBE = """\
[targets.grading.probes.health]
kind = "http_health"
url = "http://127.0.0.1:8080/health"
"""
CONTACTS = """\
[contacts.oncall]
emails = ["ops@example.org"]
[contacts.emergency]
emails = ["cto@example.org"]
tier = 2
"""
SQLITE = '[targets.grading.database]\nkind = "sqlite"\npath = "/srv/grading/app.db"\n'
INTEGRITY = ('[targets.grading.probes.integrity]\nkind = "sqlite_integrity"\n'
             'path = "/srv/grading/app.db"\n')


def warnings_of(text: str) -> list[str]:
    return [str(w) for w in config_warnings(parse_config(text, "rollbackd.toml"))]


def test_a_clean_config_has_no_warnings() -> None:
    assert warnings_of(CONTACTS + PROBE + SQLITE + INTEGRITY) == []


WARNINGS = [
    pytest.param(
        CONTACTS + '[contacts.dba]\nemails = ["DBA@example.org", "Ops@Example.org"]\n' + PROBE,
        ["contacts.dba.emails[1]: 'Ops@Example.org' is also contacts.oncall.emails[0] (addresses "
         "compare without letter case): that person gets every mail twice"],
        id="duplicate-address-any-case"),
    pytest.param(
        CONTACTS + PROBE + 'interval = "5s"\ntimeout = "5s"\n',
        ["targets.grading.probes.health.timeout: 5s is not below the probe's interval (5s): a "
         "slow run makes the next one count as failed before it starts"],
        id="timeout-at-interval"),
    pytest.param(
        CONTACTS + PROBE + SQLITE,
        ['targets.grading.database: no sqlite_integrity probe watches this database: '
         'data_corruption cannot be detected (add a probe with kind = "sqlite_integrity")'],
        id="database-without-integrity-probe"),
    pytest.param(
        PROBE + SQLITE + INTEGRITY + '[contacts.emergency]\nemails = ["cto@example.org"]\n'
        "tier = 2\n",
        ["targets.grading.database: a destructive plan (restore, session flush) may wait for "
         "`rollbackctl approve`, but no contact is mailed to approve it: add a "
         "[contacts.<role>] with tier = 1"],
        id="destructive-plan-nobody-to-approve"),
    pytest.param(
        '[contacts.oncall]\nemails = ["ops@example.org"]\n' + PROBE,
        ["contacts: no [contacts.emergency] (the emergency role): an open breaker, a key "
         "disaster or a failed rollback reaches only the usual roles"],
        id="no-emergency-contact"),
    pytest.param(
        '[escalation.roles]\nemergency = "cto"\n[contacts.oncall]\nemails = ["a@x.org"]\n'
        '[contacts.emergency]\nemails = ["b@x.org"]\n' + PROBE,
        ["contacts: no [contacts.cto] (the emergency role): an open breaker, a key disaster or "
         "a failed rollback reaches only the usual roles"],
        id="emergency-role-renamed"),
]


@pytest.mark.parametrize(("text", "expected"), WARNINGS)
def test_warning(text: str, expected: list[str]) -> None:
    assert warnings_of(text) == expected


def test_every_error_in_one_run() -> None:
    """Problems in different sections and targets are all reported, not the first one only."""
    text = ('[smtp]\nport = "x"\n[targets.empty]\nstaging = true\n' + PROBE
            + 'interval = "soon"\n[targets.web.deployment]\nkind = "docker"\n'
            '[targets.web.probes.up]\nkind = "http_health"\nurl = "http://127.0.0.1:1/"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "rollbackd.toml")
    assert sorted(info.value.errors) == [
        "smtp.port: must be an integer (got 'x')",
        "targets.empty.probes: required key is missing",
        "targets.grading.probes.health.interval: bad duration 'soon': use forms like '500ms', "
        "'30s', '5m', '1h'",
        "targets.web.deployment.container: required key is missing",
    ]


# --- the command line: exit codes and --strict ------------------------------------------------

def test_cli_warnings_exit_0_and_strict_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.toml"
    path.write_text('[daemon]\nmetrics_address = ""\n' + CONTACTS + PROBE + SQLITE)
    warning = (f"{path}: warning: targets.grading.database: no sqlite_integrity probe watches "
               'this database: data_corruption cannot be detected (add a probe with kind = '
               '"sqlite_integrity")')
    lenient = run("check-config", str(path))
    assert (lenient.returncode, lenient.stderr.splitlines()) == (0, [warning])
    assert lenient.stdout == f"{path}: ok (1 targets, 1 probes, 1 warnings)\n"
    strict = run("check-config", "--strict", str(path))
    assert (strict.returncode, strict.stdout) == (2, "")
    assert strict.stderr.splitlines() == [warning.replace("warning: ", "")]


def test_cli_errors_and_no_warnings_when_invalid(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.toml"
    path.write_text('[smtp]\nport = 0\n[targets.empty]\nstaging = true\n')
    result = run("check-config", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert sorted(result.stderr.splitlines()) == [
        f"{path}: smtp.port: must be at least 1 (got 0)",
        f"{path}: targets.empty.probes: required key is missing",
    ]


# --- a config that needs an extra that is not installed -----------------------------------------

class _Hide(importlib.abc.MetaPathFinder):
    """Makes the named top-level modules look uninstalled, as after a plain `pip install .`."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@pytest.fixture
def no_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "kubernetes"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Hide({"kubernetes"}), *sys.meta_path])


K8S = """\
[targets.shop.deployment]
kind = "kubernetes"
deployment = "shop"
[targets.shop.probes.pods]
kind = "k8s_deployment"
deployment = "shop"
"""


def test_installed_extras_are_no_error() -> None:
    assert missing_extras(parse_config(K8S, "rollbackd.toml")) == []


def test_missing_extra_is_an_error_naming_the_extra(no_kubernetes: None) -> None:
    config = parse_config(K8S, "rollbackd.toml")
    assert [str(f) for f in missing_extras(config)] == [
        "targets.shop.deployment.kind: needs the kubernetes extra, which is not installed: "
        "pip install 'rollbackd[kubernetes]'",
        "targets.shop.probes.pods.kind: needs the kubernetes extra, which is not installed: "
        "pip install 'rollbackd[kubernetes]'",
    ]


def test_demo_without_the_demo_extra_names_it(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from rollbackd.daemon.cli import main

    for name in [m for m in sys.modules if m.split(".")[0] == "flask"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Hide({"flask"}), *sys.meta_path])
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == ("rollbackd demo: needs the demo extra (flask missing): "
                                       "pip install 'rollbackd[demo]'\n")

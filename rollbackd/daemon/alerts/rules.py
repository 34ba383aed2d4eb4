"""The shipped Prometheus alerting rules, read from the installed package."""

from __future__ import annotations

from importlib.resources import files

RULES_NAME = "rollbackd.rules.yml"


def rules_text() -> str:
    return files("rollbackd.daemon.alerts").joinpath(RULES_NAME).read_text(encoding="utf-8")

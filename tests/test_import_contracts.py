"""The import-linter contracts in pyproject.toml keep up with the tree they describe."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Modules of rollbackd/probes/ that every kind may use: they are not kinds.
PROBE_HELPERS = {"__init__", "base", "http", "http_transport", "json_fields", "observation",
                 "registry"}


def _contract(name_start: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (found,) = [c for c in config["tool"]["importlinter"]["contracts"]
                if c["name"].startswith(name_start)]
    return found


def test_the_independence_contract_names_every_probe_kind() -> None:
    """A new kind is independent of the others from its first commit (the contract lists the
    kinds by name, so a kind missing from the list would escape it)."""
    kinds = {f"rollbackd.probes.{p.stem}" for p in (ROOT / "rollbackd" / "probes").glob("*.py")
             if p.stem not in PROBE_HELPERS}
    assert set(_contract("probe kinds are independent")["modules"]) == kinds

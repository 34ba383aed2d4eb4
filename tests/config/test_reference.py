"""The config reference and the examples stay true: regenerated = committed, every key has a
meaning, every example passes `rollbackd check-config --strict`, config-schema is the models'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollbackd.daemon.config import Config
from rollbackd.daemon.config_reference import (
    EXAMPLES,
    REFERENCE,
    load_examples,
    reference_markdown,
    sections,
)
from tests.config.test_cli import run

CREDENTIALS = {"smtp-password": "an smtp password", "shop-db-dsn":
               "postgresql://shop@127.0.0.1:5432/shop", "shop-redis-url": "redis://127.0.0.1:6379/1"}


def test_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text() == reference_markdown(load_examples()), (
        "docs/config-reference.md is stale: run `python -m rollbackd.daemon.config_reference`")


def test_every_key_has_a_meaning() -> None:
    missing = [f"{s.header}.{key}" for s in sections() for key, info in s.keys
               if not info.description and key != "kind"]
    assert missing == [], "document these keys with a docstring under the field"


def test_every_section_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    headers = {s.header for s in sections()}
    assert {"daemon", "smtp", "targets.<name>.probes.<probe>", "targets.<name>.deployment",
            "targets.<name>.database", "alerts", "escalation.roles"} <= headers
    for header in headers:
        assert f"[{header}]" in text, header


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*/rollbackd.toml"))


def test_the_four_examples_exist() -> None:
    assert [p.parent.name for p in examples()] == ["docker", "git-systemd", "kubernetes",
                                                   "postgres-redis"]


@pytest.mark.parametrize("example", examples(), ids=lambda p: p.parent.name)
def test_example_passes_strict_check_config(example: Path, tmp_path: Path) -> None:
    for name, value in CREDENTIALS.items():
        (tmp_path / name).write_text(value + "\n")
    result = run("check-config", "--strict", str(example),
                 env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{example}: ok (1 targets, ")


def test_config_schema_command_prints_the_models_schema() -> None:
    result = run("config-schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$defs"] == json.loads(json.dumps(Config.model_json_schema(by_alias=True)
                                                    ["$defs"]))
    assert set(schema["properties"]) == {"daemon", "smtp", "contacts", "escalation", "policy",
                                         "alerts", "targets"}
    assert schema["required"] == ["targets"]
    smtp = schema["$defs"]["SmtpSettings"]["properties"]
    assert "from" in smtp and smtp["timeout"]["anyOf"] == [{"type": "number"}, {"type": "string"}]

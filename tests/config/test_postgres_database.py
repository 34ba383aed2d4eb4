"""[targets.<name>.database] with kind = "postgres": restore_tablespace."""

from __future__ import annotations

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.rollback.data_settings import PostgresDatabase

PROBE = """\
[targets.grading.probes.health]
kind = "http_health"
url = "http://127.0.0.1:8080/health"
[targets.grading.database]
kind = "postgres"
"""


def database(extra: str) -> PostgresDatabase:
    db = parse_config(PROBE + extra, "rollbackd.toml").targets["grading"].database
    assert isinstance(db, PostgresDatabase)
    return db


def test_restore_tablespace_defaults_to_the_clusters_default() -> None:
    assert database("").restore_tablespace is None
    assert database('restore_tablespace = "restore_ssd"\n').restore_tablespace == "restore_ssd"


@pytest.mark.parametrize(("value", "error"), [
    ('""', "String should have at least 1 character"),
    ('"' + "t" * 64 + '"', "String should have at most 63 characters"),
    ("5", "must be a string"),
])
def test_a_bad_restore_tablespace_names_its_key(value: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PROBE + f"restore_tablespace = {value}\n", "rollbackd.toml")
    (only,) = info.value.errors
    assert only.startswith(f"targets.grading.database.restore_tablespace: {error}")

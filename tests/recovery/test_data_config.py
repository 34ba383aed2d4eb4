"""[targets.<name>.database], .key and .backups: parsed into models, errors name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.rollback.data_settings import PostgresDatabase, SqliteDatabase
from rollbackd.daemon.rollback.key_restore import KeyExecutor
from rollbackd.daemon.rollback.registry import build_executors
from rollbackd.daemon.rollback.sqlite_restore import SqliteExecutor
from rollbackd.policies.plans import Capability, Component

PROBE = """
[targets.grading.probes.health]
kind = "http_health"
url = "http://127.0.0.1:8080/health"
"""

FULL = PROBE + """
[targets.grading.database]
kind = "sqlite"
path = "data/grading.db"
stop = ["systemctl", "stop", "grading"]
start = ["systemctl", "start", "grading"]
migrate = ["/srv/grading/.venv/bin/alembic", "downgrade", "{revision}"]
cwd = "/srv/grading"
env_file = "/etc/grading/app.env"
tables = ["users", "grades"]
timestamp_column = "updated_at"

[targets.grading.key]
file = "/etc/grading/app.env"
env_var = "DB_ENCRYPTION_KEY"
canary = "gAAAAAB..."
restart = ["systemctl", "restart", "grading"]

[targets.grading.backups]
interval = "30m"
keep = "14d"
"""


def test_the_data_sections_parse(tmp_path: Path) -> None:
    t = parse_config(FULL, base_dir=tmp_path).targets["grading"]
    assert isinstance(t.database, SqliteDatabase)
    assert t.database.path == tmp_path / "data" / "grading.db"  # relative to the config file
    assert t.database.migrate == ["/srv/grading/.venv/bin/alembic", "downgrade", "{revision}"]
    assert t.database.tables == ["users", "grades"]
    assert t.key is not None and t.key.env_var == "DB_ENCRYPTION_KEY"
    assert (t.backups.interval, t.backups.keep) == (1800.0, 14 * 86400.0)
    found = build_executors(t)
    assert isinstance(found[Component.DATABASE], SqliteExecutor)
    assert isinstance(found[Component.KEY], KeyExecutor)
    caps = found[Component.DATABASE].capabilities()
    assert set(caps) == {Capability.DATABASE_RESTORE, Capability.DATABASE_DOWNGRADE}
    assert [s.name for s in caps[Capability.DATABASE_RESTORE] if s.destructive] == [
        "swap_database"]
    assert set(found[Component.KEY].capabilities()) == {Capability.KEY_RESTORE}


def test_defaults_back_up_hourly_and_keep_a_week() -> None:
    t = parse_config(PROBE + '[targets.grading.database]\nkind = "sqlite"\npath = "/x.db"\n'
                     ).targets["grading"]
    assert (t.backups.interval, t.backups.keep) == (3600.0, 7 * 86400.0)
    ex = build_executors(t)[Component.DATABASE]
    assert ex.capabilities() == {}  # backed up, but no argv to stop the app: no restore


def test_postgres_is_accepted_as_before() -> None:
    t = parse_config(PROBE + '[targets.grading.database]\nkind = "postgres"\n').targets["grading"]
    assert isinstance(t.database, PostgresDatabase)
    assert Component.DATABASE not in build_executors(t)


@pytest.mark.parametrize(("toml", "error"), [
    pytest.param('[targets.grading.database]\nkind = "sqlite"\n',
                 "targets.grading.database.path: required key is missing", id="no-path"),
    pytest.param('[targets.grading.database]\npath = "/x.db"\n',
                 "targets.grading.database.kind: required key is missing", id="no-kind"),
    pytest.param('[targets.grading.database]\nkind = "mysql"\n',
                 "targets.grading.database.kind: must be one of 'sqlite' or 'postgres' "
                 "(got 'mysql')", id="bad-kind"),
    pytest.param('[targets.grading.database]\nkind = "sqlite"\npath = "/x"\nstop = []\n'
                 'start = ["a"]\n', "targets.grading.database.stop: must not be empty",
                 id="empty-stop"),
    pytest.param('[targets.grading.database]\nkind = "sqlite"\npath = "/x"\nstop = ["a"]\n',
                 "targets.grading.database: stop and start go together", id="stop-no-start"),
    pytest.param('[targets.grading.database]\nkind = "sqlite"\npath = "/x"\n'
                 'migrate = ["alembic", "downgrade", "head"]\n',
                 'targets.grading.database.migrate: needs a "{revision}" placeholder',
                 id="migrate-without-placeholder"),
    pytest.param('[targets.grading.database]\nkind = "sqlite"\npath = "/x"\nwhat = 1\n',
                 "targets.grading.database.what: unknown key", id="unknown-key"),
    pytest.param('[targets.grading.key]\nenv_var = "DB KEY"\n',
                 "targets.grading.key.file: required key is missing", id="key-no-file"),
    pytest.param('[targets.grading.key]\nfile = "/k"\ncanary = "a"\ncanary_file = "/c"\n',
                 "targets.grading.key: give canary or canary_file, not both", id="two-canaries"),
    pytest.param('[targets.grading.backups]\ninterval = "0s"\n',
                 "targets.grading.backups.interval: must be greater than 0", id="zero-interval"),
    pytest.param('[targets.grading.backups]\nkeep = "forever"\n',
                 "targets.grading.backups.keep: bad duration 'forever'", id="bad-keep"),
])
def test_errors_name_the_key_path(toml: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PROBE + toml, source="rollbackd.toml")
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors

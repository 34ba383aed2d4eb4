"""The emergency-access procedures on the sample app's schema in a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.demo.sampleapp import scaffold
from rollbackd.daemon.refusal import Refused
from rollbackd.daemon.rollback.accounts import LOCKED_FOREVER, Accounts


@pytest.fixture
def app_db(postgresql: psycopg.Connection, tmp_path: Path) -> tuple[psycopg.Connection, str]:
    """The sample app's migrations and two seeded users in a fresh PostgreSQL database."""
    i = postgresql.info
    url = f"postgresql+psycopg://{i.user}@{i.host}:{i.port}/{i.dbname}"
    app = tmp_path / "app"
    scaffold(app)
    env = {**os.environ, "DATABASE_URL": url, "DB_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    for argv in (["-m", "alembic", "upgrade", "head"],
                 ["seed.py", "root@example.com", "pw-root", "--admin"],
                 ["seed.py", "user@example.com", "pw-user"]):
        subprocess.run([sys.executable, *argv], cwd=app, env=env, check=True, capture_output=True)
    return postgresql, f"postgresql://{i.user}@{i.host}:{i.port}/{i.dbname}"


def accounts(dsn: str, tmp_path: Path) -> Accounts:
    secret = tmp_path / "dsn"
    secret.write_text(dsn + "\n")
    config = parse_config(f"""
[targets.app.probes.health]
kind = "http_health"
url = "http://127.0.0.1:1/health"
[targets.app.accounts]
dsn_file = "{secret}"
emergency_ttl = "10m"
""")
    found = Accounts.of("app", config.targets["app"])
    assert dsn not in repr(found)
    return found


def user(db: psycopg.Connection, email: str) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM users WHERE email = %s", (email,)).fetchone()
    db.commit()
    assert row is not None
    return row


def test_unlock_emergency_admin_and_lockdown(app_db: tuple[psycopg.Connection, str],
                                             tmp_path: Path) -> None:
    db, dsn = app_db
    a = accounts(dsn, tmp_path)
    with db.cursor() as cur:
        cur.execute("UPDATE users SET locked_until = now() + interval '1 hour', "
                    "failed_login_attempts = 0 WHERE email = 'root@example.com'")
    db.commit()
    done = a.unlock_admin("root@example.com")
    assert isinstance(done["was_locked_until"], datetime)
    assert user(db, "root@example.com")["locked_until"] is None
    with pytest.raises(Refused) as refused:
        a.unlock_admin("user@example.com")
    assert refused.value.code == "not_admin"

    email, password, expires, created = a.emergency_admin()
    row = user(db, email)
    assert created and row["is_admin"] and row["expires_at"] == expires
    assert timedelta(minutes=9) < expires - datetime.now(UTC).replace(tzinfo=None) <= timedelta(minutes=10)
    assert bcrypt.checkpw(password.encode(), row["password_hash"].encode())
    assert password not in row["password_hash"]

    assert a.count_others() == 2
    assert a.lock_all_but_emergency() == 2
    assert a.still_open() == []
    assert user(db, "user@example.com")["locked_until"] == LOCKED_FOREVER
    assert user(db, email)["locked_until"] is None
    assert a.delete_redis_keys(["session:*"]) is None  # no Redis configured


def test_a_wrong_password_in_the_dsn_is_reported_without_it(
        app_db: tuple[psycopg.Connection, str], tmp_path: Path) -> None:
    _, dsn = app_db
    bad = dsn.replace("postgresql://postgres@", "postgresql://nobody:s3cr3t-pw@")
    with pytest.raises(Refused) as failed:
        accounts(bad, tmp_path).unlock_admin("root@example.com")
    assert failed.value.code == "database_failed"
    assert "s3cr3t-pw" not in str(failed.value)

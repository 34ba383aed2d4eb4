"""Table definitions and DB helpers shared by the grading app and its seed script."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
)

# Relative on purpose: the app, seed.py and alembic all run with cwd = the deployed dir.
DEFAULT_DATABASE_URL = "sqlite:///grading.db"

metadata = MetaData()

# Mirrors migrations/versions at head; the app names columns explicitly so a bad
# migration surfaces as a loud SQL error instead of silently missing data.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(255), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("national_id_encrypted", Text, nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("failed_login_attempts", Integer, nullable=False, default=0),
    Column("locked_until", DateTime, nullable=True),
    # Set only on temporary accounts (rollbackd's emergency admin): refused from then on.
    Column("expires_at", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
)

grades = Table(
    "grades",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("course", String(255), nullable=False),
    Column("grade", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
)


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def make_engine(url: str | None = None) -> Engine:
    # pre_ping so a restarted PostgreSQL does not poison the pool with dead connections.
    return create_engine(url or database_url(), pool_pre_ping=True)


def utcnow() -> datetime:
    # Naive UTC: the columns are TIMESTAMP WITHOUT TIME ZONE on every backend.
    return datetime.now(UTC).replace(tzinfo=None)

"""Add the grades table.

Revision ID: 0002
Revises: 0001
Create Date: 2024-01-02 00:00:00

users.email needs no extra index: its unique constraint already creates one on
both SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "grades",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", name="fk_grades_user_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("course", sa.String(255), nullable=False),
        sa.Column("grade", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_grades_user_id", "grades", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_grades_user_id", table_name="grades")
    op.drop_table("grades")

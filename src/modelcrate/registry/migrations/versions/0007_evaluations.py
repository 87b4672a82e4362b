"""Evaluations: measured accuracy and latency of a version on a data set, over time.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("data", sa.String(71), nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evaluations")

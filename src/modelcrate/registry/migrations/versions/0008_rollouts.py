"""Rollouts: a candidate version taking an alias's traffic step by step (canary) or
receiving copies of it (shadow), watched by the servers following the alias.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("stable", sa.String(64), nullable=False),
        sa.Column("candidate", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("interval_s", sa.Float, nullable=False),
        sa.Column("slos", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("step_started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
        sa.Column("decider", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("started_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollouts")

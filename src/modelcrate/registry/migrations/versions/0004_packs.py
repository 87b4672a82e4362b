"""Pack files: chunks live in packs of tens of MB, indexed by (pack, offset, size).

Chunks stored as loose blobs by earlier releases have no row here and are still
read as blobs; ``gc`` moves them into packs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "packs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("pack", sa.String(32), nullable=False, index=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chunks")
    op.drop_table("packs")

"""Lineage index: each version's parents (by digest) as rows, so ancestors and descendants
are found by indexed lookups instead of parsing every manifest. Filled from the manifests
already stored.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    parents = op.create_table(
        "version_parents",
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("parent_digest", sa.String(71), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("parent_ref", sa.Text, nullable=True),
        sa.Column("operation", sa.Text, nullable=True),
    )
    op.create_index("ix_version_parents_parent_digest", "version_parents", ["parent_digest"])
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, manifest FROM versions"))
    edges = []
    for version_id, text in rows:
        lineage = json.loads(text).get("lineage") or {}
        seen: set[str] = set()
        for parent in lineage.get("parents") or []:
            if parent["digest"] not in seen:
                seen.add(parent["digest"])
                edges.append(
                    {
                        "version_id": version_id,
                        "parent_digest": parent["digest"],
                        "seq": len(seen),
                        "parent_ref": parent.get("ref"),
                        "operation": lineage.get("operation"),
                    }
                )
    if edges:
        op.bulk_insert(parents, edges)


def downgrade() -> None:
    op.drop_table("version_parents")

"""Initial audit schema: loaded versions, flagged pairs, decisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("flagged_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("histogram", sa.JSON(), nullable=False),
        sa.UniqueConstraint("dataset", "version", name="uq_audit_versions_dataset_version"),
    )
    op.create_table(
        "audit_flagged",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("anchor_id", sa.String(512), nullable=False),
        sa.Column("doc_id", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("positive_score", sa.Float(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("is_positive", sa.Boolean(), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("action", sa.String(64), nullable=True),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("anchor_text", sa.Text(), nullable=False),
        sa.Column("doc_text", sa.Text(), nullable=False),
        sa.Column("doc_title", sa.Text(), nullable=True),
        sa.Column("positive_id", sa.String(512), nullable=True),
        sa.Column("positive_text", sa.Text(), nullable=True),
        sa.UniqueConstraint("dataset", "version", "anchor_id", "doc_id", "kind", name="uq_audit_flagged_pair"),
    )
    op.create_index("ix_audit_flagged_queue", "audit_flagged", ["dataset", "version", "quality"])
    op.create_index("ix_audit_flagged_pair", "audit_flagged", ["dataset", "anchor_id", "doc_id"])
    op.create_table(
        "audit_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("anchor_id", sa.String(512), nullable=False),
        sa.Column("doc_id", sa.String(512), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(64), nullable=True),
        sa.CheckConstraint("decision IN ('is_positive', 'is_negative', 'drop_pair', 'skip')", name="ck_audit_decision"),
    )
    op.create_index("ix_audit_decisions_pair", "audit_decisions", ["dataset", "anchor_id", "doc_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_decisions_pair", table_name="audit_decisions")
    op.drop_table("audit_decisions")
    op.drop_index("ix_audit_flagged_pair", table_name="audit_flagged")
    op.drop_index("ix_audit_flagged_queue", table_name="audit_flagged")
    op.drop_table("audit_flagged")
    op.drop_table("audit_versions")

"""Flagged pair ids are never reused: ``audit_flagged`` gets SQLite's AUTOINCREMENT.

A plain ``INTEGER PRIMARY KEY`` gives a new row the largest id + 1, so the ids of a reloaded
version's deleted rows came back, naming other pairs. SQLite cannot add AUTOINCREMENT to a
table in place: batch mode recreates it (copying the rows, ids and indexes). PostgreSQL's
sequences never reuse ids; other databases are left as they are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _recreate_flagged(autoincrement=True)


def downgrade() -> None:
    _recreate_flagged(autoincrement=False)


def _recreate_flagged(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    table_kwargs = {"sqlite_autoincrement": autoincrement}
    with op.batch_alter_table("audit_flagged", recreate="always", table_kwargs=table_kwargs):
        pass

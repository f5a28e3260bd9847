"""Output review: each reviewer's decision on each output of a run (issue 16)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "output_reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), index=True),
        sa.Column("output", sa.String(300)),
        sa.Column("reviewer", sa.String(64)),
        sa.Column("decision", sa.String(16)),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("at", sa.Float),
    )

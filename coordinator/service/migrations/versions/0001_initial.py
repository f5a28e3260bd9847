"""The first run store: users, runs, run events."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_users_token_id", "users", ["token_id"], unique=True)
    op.create_table(
        "runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("blueprint", sa.String(200), nullable=True),
        sa.Column("parameters_json", sa.Text, nullable=False),
        sa.Column("spec_yaml", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("cancel_reason", sa.Text, nullable=True),
        sa.Column("planned_json", sa.Text, nullable=False),
        sa.Column("progress_json", sa.Text, nullable=False),
        sa.Column("refusals_json", sa.Text, nullable=False),
        sa.Column("tables_json", sa.Text, nullable=False),
        sa.Column("results_dir", sa.Text, nullable=True),
    )
    op.create_index("ix_runs_owner", "runs", ["owner"])
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data_json", sa.Text, nullable=False),
    )
    op.create_index("ix_run_events_run_id", "run_events", ["run_id"])

"""What the coordinator last heard from each partner: version, protocol, reply, refusal."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partners_seen",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("node_version", sa.String(64), nullable=True),
        sa.Column("protocol", sa.Integer, nullable=True),
        sa.Column("last_reply_at", sa.Float, nullable=True),
        sa.Column("last_run", sa.String(40), nullable=True),
        sa.Column("last_refusal", sa.Text, nullable=True),
        sa.Column("last_refusal_at", sa.Float, nullable=True),
    )

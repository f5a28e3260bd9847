"""Federation-wide accounting: what each run may cost one resident of a shared population (issue 17)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "population_charges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), index=True),
        sa.Column("population", sa.String(64), index=True),
        sa.Column("rho", sa.Float),
        sa.Column("holders_json", sa.Text),
        sa.Column("settled", sa.Boolean, default=False),
        sa.Column("at", sa.Float),
    )

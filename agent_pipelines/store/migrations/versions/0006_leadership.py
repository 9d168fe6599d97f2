"""Leadership: one row per term of the active daemon (who held the lease, from when to when).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_pipelines_leadership",
        sa.Column("term", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_agent_pipelines_leadership_role_term", "agent_pipelines_leadership", ["role", "term"])


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_leadership_role_term", "agent_pipelines_leadership")
    op.drop_table("agent_pipelines_leadership")

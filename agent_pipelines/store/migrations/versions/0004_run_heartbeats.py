"""Run heartbeats (a dead run is noticed in seconds) and a status index on executions (the
scheduler looks up catch-ups waiting for a run every tick).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_pipelines_run_heartbeats",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_executions_status", "agent_pipelines_executions", ["status"])


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_executions_status", "agent_pipelines_executions")
    op.drop_table("agent_pipelines_run_heartbeats")

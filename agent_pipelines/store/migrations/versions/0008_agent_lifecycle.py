"""Agent lifecycle: each managed agent's state (asleep, waking, ready, ...) and the history of its
wakes and sleeps; executions found by agent and time (is it busy, when was it last used).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_pipelines_agent_lifecycle",
        sa.Column("agent", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("woke_at", sa.DateTime(timezone=True)),
        sa.Column("process", sa.String(255)),
        sa.Column("detail", sa.Text),
    )
    op.create_table(
        "agent_pipelines_lifecycle_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_agent_pipelines_lifecycle_events_agent_at", "agent_pipelines_lifecycle_events", ["agent", "at"])
    op.create_index("ix_agent_pipelines_executions_agent_updated", "agent_pipelines_executions", ["agent", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_executions_agent_updated", "agent_pipelines_executions")
    op.drop_index("ix_agent_pipelines_lifecycle_events_agent_at", "agent_pipelines_lifecycle_events")
    op.drop_table("agent_pipelines_lifecycle_events")
    op.drop_table("agent_pipelines_agent_lifecycle")

"""Agent load: each run's view of each agent's limit, requests in flight and waiting, latency.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "agent_pipelines_agent_load"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("agent", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("limit", sa.Integer, nullable=False),
        sa.Column("max_limit", sa.Integer, nullable=False),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("queued", sa.Integer, nullable=False),
        sa.Column("oldest_wait_s", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("baseline_ms", sa.Float),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("overloads", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("last_skip_at", sa.DateTime(timezone=True)),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_agent_load_updated", _TABLE, ["agent", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_agent_load_updated", table_name=_TABLE)
    op.drop_table(_TABLE)

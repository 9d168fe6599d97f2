"""Core v2: executions keep their reason, retry time, deadline and publication; full results
live in their own table; session leases, agent health and when each task was first seen.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_EXECUTION_COLUMNS = (
    sa.Column("reason", sa.Text),
    sa.Column("answered_at", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("deadline", sa.DateTime(timezone=True)),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Column("upstream", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        for column in NEW_EXECUTION_COLUMNS:
            batch.add_column(column.copy())
    # `running` meant "the request may have left"; it is now called `sending`.
    op.execute("UPDATE agent_pipelines_executions SET status = 'sending' WHERE status = 'running'")
    # Everything recorded before this release is already in Dagster.
    op.execute("UPDATE agent_pipelines_executions SET published_at = updated_at WHERE published_at IS NULL")
    op.create_table(
        "agent_pipelines_results",
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("system", sa.Text),
        sa.Column("output", sa.Text),
        sa.Column("model", sa.String(255)),
        sa.Column("session_id", sa.String(255)),
        sa.Column("tokens_in", sa.Integer),
        sa.Column("tokens_out", sa.Integer),
        sa.Column("details", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_results_task_created", "agent_pipelines_results", ["task", "created_at"])
    op.create_table(
        "agent_pipelines_session_leases",
        sa.Column("session_key", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agent_pipelines_agent_health",
        sa.Column("agent", sa.String(128), primary_key=True),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("unhealthy_since", sa.DateTime(timezone=True)),
        sa.Column("next_probe_at", sa.DateTime(timezone=True)),
        sa.Column("probe_interval_s", sa.Float),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agent_pipelines_task_registry",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_pipelines_task_registry")
    op.drop_table("agent_pipelines_agent_health")
    op.drop_table("agent_pipelines_session_leases")
    op.drop_index("ix_agent_pipelines_results_task_created", "agent_pipelines_results")
    op.drop_table("agent_pipelines_results")
    op.execute("UPDATE agent_pipelines_executions SET status = 'running' WHERE status = 'sending'")
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        for column in NEW_EXECUTION_COLUMNS:
            batch.drop_column(column.name)

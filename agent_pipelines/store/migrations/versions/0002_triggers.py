"""Triggers: claims on executions, events from the ingress, task states, run-now requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("lateness_ms", sa.Float))
    op.create_index(
        "ix_agent_pipelines_executions_task_due", "agent_pipelines_executions", ["task", "due_time"]
    )
    op.create_table(
        "agent_pipelines_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False, unique=True),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_events_received", "agent_pipelines_events", ["received_at"])
    op.create_table(
        "agent_pipelines_task_states",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("changed_by", sa.String(255)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agent_pipelines_run_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("requested_by", sa.String(255)),
        sa.Column("variables", sa.Text),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("launched_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("agent_pipelines_run_requests")
    op.drop_table("agent_pipelines_task_states")
    op.drop_table("agent_pipelines_events")
    op.drop_index("ix_agent_pipelines_executions_task_due", "agent_pipelines_executions")
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        batch.drop_column("lateness_ms")
        batch.drop_column("sent_at")

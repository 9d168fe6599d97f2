"""Executions, task sessions and session history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_pipelines_executions",
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("due_time", sa.DateTime(timezone=True)),
        sa.Column("prompt_version", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16)),
        sa.Column("failure_kind", sa.String(32)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_agent_pipelines_executions_task_created",
        "agent_pipelines_executions",
        ["task", "created_at"],
    )
    op.create_index("ix_agent_pipelines_executions_run", "agent_pipelines_executions", ["run_id"])
    op.create_table(
        "agent_pipelines_task_sessions",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("remote_id", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agent_pipelines_session_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_agent_pipelines_session_messages_task_id",
        "agent_pipelines_session_messages",
        ["task", "id"],
    )


def downgrade() -> None:
    op.drop_table("agent_pipelines_session_messages")
    op.drop_table("agent_pipelines_task_sessions")
    op.drop_table("agent_pipelines_executions")

"""Prompt registry, its audit trail, and evaluations of every output.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_pipelines_prompt_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("parent_version", sa.String(64)),
        sa.Column("base_version", sa.String(64), nullable=False),
        sa.Column("author", sa.String(255)),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("system", sa.Text),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("motivation", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("task", "version", name="uq_agent_pipelines_prompt_versions_task_version"),
    )
    op.create_index("ix_agent_pipelines_prompt_versions_task_status", "agent_pipelines_prompt_versions", ["task", "status"])
    op.create_table(
        "agent_pipelines_prompt_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_prompt_events_task", "agent_pipelines_prompt_events", ["task", "id"])
    op.create_table(
        "agent_pipelines_evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("check_name", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("details", sa.Text),
        sa.Column("canary", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("tokens", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_evaluations_task_version", "agent_pipelines_evaluations", ["task", "version"])
    op.create_index("ix_agent_pipelines_evaluations_task_created", "agent_pipelines_evaluations", ["task", "created_at"])


def downgrade() -> None:
    op.drop_table("agent_pipelines_evaluations")
    op.drop_table("agent_pipelines_prompt_events")
    op.drop_table("agent_pipelines_prompt_versions")

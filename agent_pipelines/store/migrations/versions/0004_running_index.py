"""Find in-flight executions by status and age: the scheduler's interrupted-run check.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_agent_pipelines_executions_status_updated", "agent_pipelines_executions", ["status", "updated_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_executions_status_updated", "agent_pipelines_executions")

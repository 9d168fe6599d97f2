"""Batch evaluations: per run and prompt version, how many items passed their checks.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "agent_pipelines_batch_evaluations"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("canary", sa.Boolean, nullable=False),
        sa.Column("checked", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("failed_checks", sa.Text, nullable=False),
        sa.Column("samples", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_batch_evaluations_task", _TABLE, ["task", "id"])


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_batch_evaluations_task", table_name=_TABLE)
    op.drop_table(_TABLE)

"""Executions keep their token cost (from the agent's price table in the catalog).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        batch.add_column(sa.Column("cost", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("agent_pipelines_executions") as batch:
        batch.drop_column("cost")

"""Run heartbeats say which process beats (host, pid, process start), so a run whose process is
gone is known dead at once on its own machine instead of after the silence timeout.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pipelines_run_heartbeats") as batch:
        batch.add_column(sa.Column("worker", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("agent_pipelines_run_heartbeats") as batch:
        batch.drop_column("worker")

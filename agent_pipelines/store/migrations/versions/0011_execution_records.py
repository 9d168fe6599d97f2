"""Execution records: the indexes that searching 1,000,000 executions needs, and their archive.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

The indexes (agent_pipelines.records.indexes) are built here while the executions table is small;
on a large PostgreSQL table a plain CREATE INDEX would hold up the scheduler's writes for the
whole build, so they are left to `agent-pipelines executions build-indexes` (CREATE INDEX
CONCURRENTLY), and searching scans until then.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agent_pipelines.records.indexes import (
    BUILD_IN_MIGRATION_BELOW,
    drop_all,
    ensure_trigram_extension,
    indexes_for,
)

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("agent_pipelines.store.migrations")


def _archive_columns(table: str) -> list[sa.Column]:
    if table == "executions":
        return [
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
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("reason", sa.Text),
            sa.Column("latency_ms", sa.Float),
            sa.Column("cost", sa.Float),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("sent_at", sa.DateTime(timezone=True)),
            sa.Column("lateness_ms", sa.Float),
            sa.Column("answered_at", sa.DateTime(timezone=True)),
            sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
            sa.Column("deadline", sa.DateTime(timezone=True)),
            sa.Column("published_at", sa.DateTime(timezone=True)),
            sa.Column("upstream", sa.Text),
            sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        ]
    return [
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
        sa.Column("execution_created_at", sa.DateTime(timezone=True)),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    # Each result keeps its execution's created_at (the records' sort key), so text search through
    # the trigram index sorts its matches from the results alone. Existing results are filled in
    # here, before any index on them exists: one UPDATE, 53 s for 970,000 results on the
    # benchmark's PostgreSQL. ADD COLUMN locks the results table until the migration commits, so
    # results being written wait that long.
    op.add_column("agent_pipelines_results", sa.Column("execution_created_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE agent_pipelines_results SET execution_created_at = (SELECT e.created_at FROM agent_pipelines_executions AS e"
        " WHERE e.idempotency_key = agent_pipelines_results.idempotency_key)"
    )
    op.create_table("agent_pipelines_executions_archive", *_archive_columns("executions"))
    op.create_index(
        "ix_agent_pipelines_executions_archive_created_key", "agent_pipelines_executions_archive", ["created_at", "idempotency_key"]
    )
    op.create_index("ix_agent_pipelines_executions_archive_task_created", "agent_pipelines_executions_archive", ["task", "created_at"])
    op.create_table("agent_pipelines_results_archive", *_archive_columns("results"))

    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT count(*) FROM (SELECT 1 FROM agent_pipelines_executions LIMIT :n) AS sample"),
        {"n": BUILD_IN_MIGRATION_BELOW},
    ).scalar_one()
    if bind.dialect.name == "postgresql" and rows >= BUILD_IN_MIGRATION_BELOW:
        log.warning(
            "agent_pipelines_executions holds %s+ rows: the execution-record indexes are left to "
            "`agent-pipelines executions build-indexes` (built concurrently, without blocking writes)",
            rows,
        )
        return
    trigram = bind.dialect.name == "postgresql" and ensure_trigram_extension(bind)
    for index in indexes_for(bind.dialect.name):
        if index.trigram and not trigram:
            continue
        op.execute(index.create_sql())


def downgrade() -> None:
    drop_all(op.get_bind())
    op.drop_table("agent_pipelines_results_archive")
    op.drop_table("agent_pipelines_executions_archive")
    with op.batch_alter_table("agent_pipelines_results") as batch:
        batch.drop_column("execution_created_at")

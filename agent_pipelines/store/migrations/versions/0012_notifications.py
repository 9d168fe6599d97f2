"""Notifications: the outbox of messages to deliver, with their de-duplication and retries.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "agent_pipelines_notification_outbox"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(512), nullable=False, unique=True),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("latest_kind", sa.String(32), nullable=False),
        sa.Column("task", sa.String(128)),
        sa.Column("agent", sa.String(128)),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("latest_event", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_s", sa.Float, nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reported", sa.Integer, nullable=False, server_default="0"),
        sa.Column("carried", sa.Integer, nullable=False, server_default="0"),
        sa.Column("followed_up", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_agent_pipelines_notification_outbox_due", _TABLE, ["status", "next_attempt_at"])
    op.create_index(
        "ix_agent_pipelines_notification_outbox_window", _TABLE, ["channel", "subject", "family", "window_start"]
    )


def downgrade() -> None:
    op.drop_index("ix_agent_pipelines_notification_outbox_window", table_name=_TABLE)
    op.drop_index("ix_agent_pipelines_notification_outbox_due", table_name=_TABLE)
    op.drop_table(_TABLE)

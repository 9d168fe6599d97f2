"""Audit log: append-only, hash-chained entries of every mutation and every denied attempt; the
digests of the catalog's items as last loaded (so a catalog change is audited item by item).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "agent_pipelines_audit"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("via", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "agent_pipelines_catalog_items",
        sa.Column("item", sa.String(160), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("source", sa.String(512)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_pipelines_audit_at", _TABLE, ["at"])
    op.create_index("ix_agent_pipelines_audit_target", _TABLE, ["target", "seq"])
    op.create_index("ix_agent_pipelines_audit_actor", _TABLE, ["actor", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION agent_pipelines_audit_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'agent_pipelines_audit is append-only'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER agent_pipelines_audit_append_only BEFORE UPDATE OR DELETE ON {_TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION agent_pipelines_audit_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER agent_pipelines_audit_no_{event.lower()} BEFORE {event} ON {_TABLE} "
                "BEGIN SELECT RAISE(ABORT, 'agent_pipelines_audit is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER agent_pipelines_audit_append_only ON {_TABLE}")
        op.execute("DROP FUNCTION agent_pipelines_audit_append_only()")
    op.drop_table(_TABLE)
    op.drop_table("agent_pipelines_catalog_items")

"""The indexes that execution records need (revision 0011), and building them without blocking.

A plain `CREATE INDEX` holds a lock that makes every INSERT and UPDATE on the table wait until the
build ends: seconds for a B-tree over a million executions, longer for the trigram index over
their outputs. The migration therefore builds them itself only while the tables are small (a new
or young installation); on a large PostgreSQL table it leaves them to `build_online`
(`agent-pipelines executions build-indexes`), which uses `CREATE INDEX CONCURRENTLY` so the
scheduler keeps writing during the build. Searching works without them, only slower.

These definitions are revision 0011's: change them with a new migration, never in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

log = logging.getLogger(__name__)

#: Below this many executions the migration builds the indexes itself (well under a second).
BUILD_IN_MIGRATION_BELOW = 50_000


@dataclass(frozen=True)
class RecordIndex:
    name: str
    table: str
    columns: tuple[str, ...]
    trigram: bool = False  # PostgreSQL only: GIN (column gin_trgm_ops), needs the pg_trgm extension

    def create_sql(self, concurrently: bool = False) -> str:
        how = "CONCURRENTLY " if concurrently else ""
        if self.trigram:
            (column,) = self.columns
            return f"CREATE INDEX {how}IF NOT EXISTS {self.name} ON {self.table} USING gin ({column} gin_trgm_ops)"
        return f"CREATE INDEX {how}IF NOT EXISTS {self.name} ON {self.table} ({', '.join(self.columns)})"


_EXECUTIONS = "agent_pipelines_executions"
RECORD_INDEXES: tuple[RecordIndex, ...] = (
    RecordIndex("ix_agent_pipelines_executions_created_key", _EXECUTIONS, ("created_at", "idempotency_key")),
    RecordIndex("ix_agent_pipelines_executions_status_created", _EXECUTIONS, ("status", "created_at")),
    RecordIndex("ix_agent_pipelines_executions_agent_created", _EXECUTIONS, ("agent", "created_at")),
    RecordIndex("ix_agent_pipelines_executions_trigger_created", _EXECUTIONS, ("trigger", "created_at")),
    RecordIndex("ix_agent_pipelines_executions_version_created", _EXECUTIONS, ("prompt_version", "created_at")),
    RecordIndex("ix_agent_pipelines_results_output_trgm", "agent_pipelines_results", ("output",), trigram=True),
    RecordIndex("ix_agent_pipelines_executions_error_trgm", _EXECUTIONS, ("error",), trigram=True),
)


def indexes_for(dialect: str) -> tuple[RecordIndex, ...]:
    return tuple(i for i in RECORD_INDEXES if dialect == "postgresql" or not i.trigram)


def ensure_trigram_extension(conn: sa.Connection) -> bool:
    """`CREATE EXTENSION pg_trgm` when allowed (it is a trusted extension: a database owner may
    create it); False when it cannot be, and text search then scans instead."""
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        return True
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm is not available (%s): text search over executions will scan", exc.orig)
        return False


def trigram_installed(conn: sa.Connection) -> bool:
    return conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first() is not None


def missing_indexes(engine: sa.Engine) -> list[RecordIndex]:
    """Indexes of revision 0011 that are absent, or left invalid by an interrupted online build."""
    wanted = indexes_for(engine.dialect.name)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            valid = set(
                conn.execute(
                    sa.text(
                        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE i.indisvalid AND c.relname LIKE 'ix_agent_pipelines_%'"
                    )
                ).scalars()
            )
        else:
            valid = set(conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'")).scalars())
    return [index for index in wanted if index.name not in valid]


def build_online(engine: sa.Engine, report: Callable[[str], None] = log.info) -> list[str]:
    """Build the missing indexes; on PostgreSQL with CREATE INDEX CONCURRENTLY (writes go on).

    Returns the names built. An invalid index left by an interrupted build is dropped first
    (concurrently too), since `IF NOT EXISTS` would otherwise keep it.
    """
    built: list[str] = []
    todo = missing_indexes(engine)
    if not todo:
        return built
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            for index in todo:
                conn.execute(sa.text(index.create_sql()))
                built.append(index.name)
        return built
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if any(index.trigram for index in todo) and not (trigram_installed(conn) or _create_extension_autocommit(conn)):
            todo = [index for index in todo if not index.trigram]
        for index in todo:
            report(f"building {index.name} on {index.table} (concurrently)")
            conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}"))
            conn.execute(sa.text(index.create_sql(concurrently=True)))
            built.append(index.name)
    return built


def _create_extension_autocommit(conn: sa.Connection) -> bool:
    try:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        return True
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm is not available (%s): text search over executions will scan", exc.orig)
        return False


def drop_all(conn: sa.Connection) -> None:
    for index in indexes_for(conn.dialect.name):
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index.name}"))

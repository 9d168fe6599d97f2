"""Bring agent_pipelines' tables to the newest schema, safely from many processes at once.

Every run worker opens the store, so the first runs after an upgrade race to migrate: a
PostgreSQL advisory lock (or a file lock beside the SQLite database) lets one of them do it.
Each upgrade is one transaction on both databases, so one that fails leaves the tables as they
were (SQLite's driver would otherwise commit each schema statement on its own).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock

from alembic import command
from agent_pipelines.store.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x61676E74  # "agnt": arbitrary, constant across releases


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(connection: sa.Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def ensure_migrated(engine: sa.Engine) -> None:
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        lock_path = f"{database}.migrate.lock" if database and database != ":memory:" else None
        if lock_path:
            Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
            with FileLock(lock_path, timeout=120):
                _upgrade(engine)
        else:
            _upgrade(engine)
        return
    _upgrade(engine)


def _upgrade(engine: sa.Engine) -> None:
    config = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # pysqlite opens no transaction before DDL: begin one, exclusive, so that every
            # statement of the upgrade commits together and no other connection writes between them
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")

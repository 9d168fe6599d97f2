"""The database under agent_pipelines' tables: engine, dialect helpers and small conversions."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    from dagster import DagsterInstance

STATE_DB_FILENAME = "agent_pipelines.db"
#: Keys per statement in `IN (...)` lists and bulk updates (SQLite allows 32,766 parameters).
CHUNK = 500
T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def json_or_none(value: str | None) -> Any:
    return json.loads(value) if value else None


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def select_in(conn: sa.Connection, statement: sa.Select[Any], column: sa.ColumnElement[Any], values: Iterable[Any] | None) -> list[sa.Row[Any]]:
    """The rows of `statement` whose `column` is one of `values` (every row when None), asked in
    chunks: upstream SQLite binds at most 32,766 values in a statement (a fleet of 40,000 nodes)."""
    if values is None:
        return list(conn.execute(statement))
    return [row for part in chunks(list(values)) for row in conn.execute(statement.where(column.in_(part)))]


def sqlalchemy_url(url: str) -> str:
    """Dagster's `postgresql://` URLs mean psycopg2 (installed with dagster-postgres), while
    SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def url_for_instance(instance: DagsterInstance) -> str:
    """The instance's PostgreSQL database when it has one, else a SQLite file in DAGSTER_HOME."""
    postgres_url = getattr(instance.run_storage, "postgres_url", None)
    if postgres_url:
        return postgres_url
    return f"sqlite:///{Path(instance.root_directory) / STATE_DB_FILENAME}"


def create_engine(url: str) -> sa.Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the webserver read while run workers write; busy_timeout rides out the
            # short write locks taken by concurrent runs instead of failing them.
            _set_wal(cursor)
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _set_wal(cursor: Any, wait_s: float = 30.0) -> None:
    """Switch to WAL, waiting out a migration's lock: while another connection migrated a new
    database, the switch was seen to fail with "database is locked" (once in 100 fresh files under
    two threads and two processes) instead of waiting on the busy timeout."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class StoreBase:
    """What every group of tables needs: the engine and the dialect's upsert."""

    engine: sa.Engine

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

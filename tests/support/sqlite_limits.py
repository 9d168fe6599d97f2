"""SQLite as upstream builds it: Debian's allows 250,000 bound values in a statement, upstream
32,766, so a query that binds a whole fleet's names passes here and fails elsewhere."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa

UPSTREAM_MAX_BOUND_VALUES = 32_766


def as_upstream_sqlite(engine: sa.Engine) -> None:
    """New connections of `engine` bind at most upstream's number of values (existing ones are dropped)."""

    @sa.event.listens_for(engine, "connect")
    def _limit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, UPSTREAM_MAX_BOUND_VALUES)

    engine.dispose()

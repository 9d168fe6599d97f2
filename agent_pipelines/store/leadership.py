"""Terms of the active daemon, as `agent_pipelines.failover` records them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware


@dataclass(frozen=True)
class Term:
    term: int
    role: str
    holder: str
    acquired_at: dt.datetime
    released_at: dt.datetime | None
    reason: str | None


class LeadershipRecords(StoreBase):
    def leadership_terms(self, role: str, limit: int = 20) -> list[Term]:
        """The latest terms of `role`, newest first."""
        table = schema.leadership
        query = sa.select(table).where(table.c.role == role).order_by(table.c.term.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Term(row.term, row.role, row.holder, aware(row.acquired_at), aware(row.released_at), row.reason)  # type: ignore[arg-type]
            for row in rows
        ]

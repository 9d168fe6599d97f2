"""Run heartbeats: each run that carries executions says every few seconds that it is alive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, chunks, utcnow


class RunHeartbeats(StoreBase):
    def beat(self, run_id: str, worker: str | None = None) -> None:
        table = schema.run_heartbeats
        now = utcnow()
        statement = self._insert(table).values(run_id=run_id, beat_at=now, worker=worker)
        statement = statement.on_conflict_do_update(index_elements=[table.c.run_id], set_={"beat_at": now, "worker": worker})
        with self.engine.begin() as conn:
            conn.execute(statement)

    def forget_beats(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        table = schema.run_heartbeats
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id.in_(list(run_ids))))

    def prune_beats(self, before: dt.datetime) -> int:
        """Forget beats older than `before` (their runs ended, or were judged dead, long ago)."""
        table = schema.run_heartbeats
        with self.engine.begin() as conn:
            return conn.execute(table.delete().where(table.c.beat_at < before)).rowcount

    def last_beats(self, run_ids: Sequence[str]) -> dict[str, dt.datetime]:
        table = schema.run_heartbeats
        found: dict[str, dt.datetime] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(run_ids)):
                rows = conn.execute(sa.select(table.c.run_id, table.c.beat_at).where(table.c.run_id.in_(list(part)))).all()
                found.update({row.run_id: aware(row.beat_at) for row in rows})  # type: ignore[misc]
        return found

    def beat_workers(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Run id -> the process that last beat for it (`host:pid:start`), where known."""
        table = schema.run_heartbeats
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(run_ids)):
                rows = conn.execute(sa.select(table.c.run_id, table.c.worker).where(table.c.run_id.in_(list(part)))).all()
                found.update({row.run_id: row.worker for row in rows if row.worker})
        return found

"""Per-task state kept beside the catalog: paused or not, "run now" requests, first seen."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, chunks, utcnow


@dataclass(frozen=True)
class TaskState:
    task: str
    paused: bool
    reason: str | None
    changed_by: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class RunNowRequest:
    id: int
    task: str
    requested_by: str | None
    variables: dict[str, Any]
    requested_at: dt.datetime


class TaskRecords(StoreBase):
    # -- paused / resumed -------------------------------------------------------------------------

    def set_paused(self, task: str, paused: bool, *, reason: str | None = None, changed_by: str | None = None) -> None:
        table = schema.task_states
        values = {"paused": paused, "reason": reason, "changed_by": changed_by, "updated_at": utcnow()}
        statement = self._insert(table).values(task=task, **values)
        statement = statement.on_conflict_do_update(index_elements=[table.c.task], set_=values)
        with self.engine.begin() as conn:
            conn.execute(statement)

    def task_states(self) -> dict[str, TaskState]:
        table = schema.task_states
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table)).mappings().all()
        return {
            row["task"]: TaskState(row["task"], row["paused"], row["reason"], row["changed_by"], aware(row["updated_at"]))  # type: ignore[arg-type]
            for row in rows
        }

    def paused_tasks(self) -> set[str]:
        table = schema.task_states
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(table.c.task).where(table.c.paused.is_(True))).scalars().all())

    # -- run now ----------------------------------------------------------------------------------

    def add_run_request(self, task: str, *, requested_by: str | None = None, variables: dict[str, Any] | None = None) -> int:
        table = schema.run_requests
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    table.insert()
                    .values(task=task, requested_by=requested_by, variables=json.dumps(variables or {}), requested_at=utcnow())
                    .returning(table.c.id)
                ).scalar_one()
            )

    def pending_run_requests(self, limit: int = 100) -> list[RunNowRequest]:
        table = schema.run_requests
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table).where(table.c.launched_at.is_(None)).order_by(table.c.id).limit(limit)
            ).mappings().all()
        return [
            RunNowRequest(row["id"], row["task"], row["requested_by"], json.loads(row["variables"] or "{}"), aware(row["requested_at"]))  # type: ignore[arg-type]
            for row in rows
        ]

    def mark_run_requests_launched(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        table = schema.run_requests
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.id.in_(list(ids))).values(launched_at=utcnow()))

    # -- when each task first existed -------------------------------------------------------------

    def register_tasks(self, tasks: Sequence[str], now: dt.datetime) -> dict[str, dt.datetime]:
        """Record tasks seen for the first time; return when each given task was first seen."""
        table = schema.task_registry
        known = self.first_seen(tasks)
        new = [{"task": name, "first_seen_at": now} for name in tasks if name not in known]
        if new:
            statement = self._insert(table).on_conflict_do_nothing(index_elements=[table.c.task])
            with self.engine.begin() as conn:
                for part in chunks(new):
                    conn.execute(statement, list(part))
            known = self.first_seen(tasks)
        return known

    def first_seen(self, tasks: Sequence[str]) -> dict[str, dt.datetime]:
        table = schema.task_registry
        found: dict[str, dt.datetime] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(tasks)):
                rows = conn.execute(sa.select(table).where(table.c.task.in_(list(part)))).all()
                found.update({row.task: aware(row.first_seen_at) for row in rows})  # type: ignore[misc]
        return found

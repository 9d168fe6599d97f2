"""Each run's view of each agent's load, so every process (runs, the sensor, the CLI) sees one
agent: its learned limit, requests in flight and waiting, latency (see `scheduling.load`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, json_or_none, select_in


@dataclass(frozen=True)
class AgentLoad:
    """One holder's (run's) view of one agent."""

    agent: str
    holder: str
    limit: int
    max_limit: int
    in_flight: int
    queued: int
    updated_at: dt.datetime
    oldest_wait_s: float | None = None
    latency_ms: float | None = None
    baseline_ms: float | None = None
    sent: int = 0
    overloads: int = 0
    skipped: int = 0
    last_skip_at: dt.datetime | None = None
    state: Mapping[str, Any] = field(default_factory=dict)  # the limiter's (agents.limiter.LimiterState)


class AgentLoadRecords(StoreBase):
    def record_agent_load(self, loads: Sequence[AgentLoad]) -> None:
        """Write (replace) each holder's view of each agent."""
        if not loads:
            return
        table = schema.agent_load
        rows = [
            {
                "agent": load.agent,
                "holder": load.holder,
                "limit": load.limit,
                "max_limit": load.max_limit,
                "in_flight": load.in_flight,
                "queued": load.queued,
                "oldest_wait_s": load.oldest_wait_s,
                "latency_ms": load.latency_ms,
                "baseline_ms": load.baseline_ms,
                "sent": load.sent,
                "overloads": load.overloads,
                "skipped": load.skipped,
                "last_skip_at": load.last_skip_at,
                "state": json.dumps(dict(load.state)),
                "updated_at": load.updated_at,
            }
            for load in loads
        ]
        statement = self._insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.agent, table.c.holder],
            set_={name: statement.excluded[name] for name in rows[0] if name not in ("agent", "holder")},
        )
        with self.engine.begin() as conn:
            conn.execute(statement, rows)

    def agent_loads(self, agents: Sequence[str] | None = None, since: dt.datetime | None = None) -> list[AgentLoad]:
        """Every holder's view (of `agents`, updated since `since`), newest first. `agents` is
        asked for in chunks: a fleet of 10,000 nodes is past SQLite's limit of bound values."""
        table = schema.agent_load
        statement = sa.select(table)
        if since is not None:
            statement = statement.where(table.c.updated_at >= since)
        with self.engine.connect() as conn:
            rows = [row._mapping for row in select_in(conn, statement, table.c.agent, agents)]
        rows.sort(key=lambda row: aware(row["updated_at"]), reverse=True)
        return [
            AgentLoad(
                agent=row["agent"],
                holder=row["holder"],
                limit=row["limit"],
                max_limit=row["max_limit"],
                in_flight=row["in_flight"],
                queued=row["queued"],
                updated_at=aware(row["updated_at"]),  # type: ignore[arg-type]
                oldest_wait_s=row["oldest_wait_s"],
                latency_ms=row["latency_ms"],
                baseline_ms=row["baseline_ms"],
                sent=row["sent"],
                overloads=row["overloads"],
                skipped=row["skipped"],
                last_skip_at=aware(row["last_skip_at"]),
                state=json_or_none(row["state"]) or {},
            )
            for row in rows
        ]

    def forget_agent_loads(self, before: dt.datetime) -> int:
        """Drop views not updated since `before`, except each agent's newest (its learned state)."""
        table = schema.agent_load
        newest = sa.select(table.c.agent, sa.func.max(table.c.updated_at).label("at")).group_by(table.c.agent).subquery()
        keep = sa.select(newest.c.agent).where(newest.c.agent == table.c.agent, newest.c.at == table.c.updated_at)
        with self.engine.begin() as conn:
            result = conn.execute(table.delete().where(table.c.updated_at < before, ~sa.exists(keep)))
        return int(result.rowcount or 0)

    def newest_due_times(self, tasks: Sequence[str], due_by: dt.datetime) -> dict[str, dt.datetime]:
        """Each task's newest scheduled due time, up to `due_by`, that any run has claimed (an
        older one still waiting for its agent is superseded by it, for `overload: latest_only`)."""
        if not tasks:
            return {}
        table = schema.executions
        statement = (
            sa.select(table.c.task, sa.func.max(table.c.due_time))
            .where(table.c.trigger == "schedule", table.c.due_time <= due_by)
            .group_by(table.c.task)
        )
        with self.engine.connect() as conn:
            rows = select_in(conn, statement, table.c.task, tasks)
        return {task: aware(due) for task, due in rows if due is not None}  # type: ignore[misc]

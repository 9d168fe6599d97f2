"""Managed agents' lifecycle state and history (see `agent_pipelines.lifecycle`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from agent_pipelines.store import schema, status
from agent_pipelines.store.base import StoreBase, aware, select_in, utcnow

ASLEEP = "asleep"
WAKING = "waking"
READY = "ready"
FAILED = "failed"  # a wake did not bring it up; tried again when work comes
STATES = (ASLEEP, WAKING, READY, FAILED)
#: Executions in these states hold their agent awake.
IN_FLIGHT = (status.CLAIMED, status.SENDING, status.RETRYING)


@dataclass(frozen=True)
class LifecycleState:
    agent: str
    state: str
    since: dt.datetime
    woke_at: dt.datetime | None = None
    process: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class LifecycleEvent:
    agent: str
    event: str
    at: dt.datetime
    detail: str | None


class LifecycleRecords(StoreBase):
    def lifecycle_states(self) -> dict[str, LifecycleState]:
        table = schema.agent_lifecycle
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table)).all()
        return {
            row.agent: LifecycleState(row.agent, row.state, aware(row.since), aware(row.woke_at), row.process, row.detail)  # type: ignore[arg-type]
            for row in rows
        }

    def move_lifecycle(
        self,
        agent: str,
        to: str,
        *,
        expect: Collection[str],
        at: dt.datetime | None = None,
        event: str | None = None,
        detail: str | None = None,
        **fields: object,
    ) -> bool:
        """Move `agent` to state `to` if it is in one of `expect` (an agent never seen counts as
        asleep); record `event` with it. False when another caller moved it first."""
        table = schema.agent_lifecycle
        at = at or utcnow()
        values = {"state": to, "since": at, "detail": detail, **fields}
        with self.engine.begin() as conn:
            moved = conn.execute(table.update().where(table.c.agent == agent, table.c.state.in_(list(expect))).values(**values)).rowcount
            if not moved and ASLEEP in expect:
                exists = conn.execute(sa.select(table.c.agent).where(table.c.agent == agent)).first()
                if exists is None:
                    conn.execute(table.insert().values(agent=agent, **values))
                    moved = 1
            if moved and event:
                conn.execute(schema.lifecycle_events.insert().values(agent=agent, event=event, at=at, detail=detail))
        return bool(moved)

    def record_lifecycle_event(self, agent: str, event: str, at: dt.datetime | None = None, detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(schema.lifecycle_events.insert().values(agent=agent, event=event, at=at or utcnow(), detail=detail))

    def lifecycle_events(self, agents: Iterable[str] | None = None, since: dt.datetime | None = None, limit: int = 10_000) -> list[LifecycleEvent]:
        """Oldest first."""
        table = schema.lifecycle_events
        query = sa.select(table).order_by(table.c.at, table.c.id).limit(limit)
        if since is not None:
            query = query.where(table.c.at >= since)
        with self.engine.connect() as conn:
            rows = select_in(conn, query, table.c.agent, agents)
        # asked in chunks, each its oldest `limit`: merged
        rows = sorted(rows, key=lambda row: (aware(row.at), row.id))[:limit]
        return [LifecycleEvent(row.agent, row.event, aware(row.at), row.detail) for row in rows]  # type: ignore[arg-type]

    def agents_in_flight(self, agents: Collection[str]) -> set[str]:
        """The agents among `agents` with an execution claimed, in flight or waiting to retry."""
        table = schema.executions
        if not agents:
            return set()
        query = sa.select(table.c.agent).where(table.c.status.in_(IN_FLIGHT)).distinct()
        with self.engine.connect() as conn:
            return {row.agent for row in select_in(conn, query, table.c.agent, agents)}

    def last_used(self, agents: Collection[str]) -> dict[str, dt.datetime]:
        """When each agent's executions last changed (sent, answered, settled)."""
        table = schema.executions
        if not agents:
            return {}
        query = sa.select(table.c.agent, sa.func.max(table.c.updated_at)).group_by(table.c.agent)
        with self.engine.connect() as conn:
            rows = select_in(conn, query, table.c.agent, agents)
        return {agent: aware(at) for agent, at in rows if at is not None}  # type: ignore[misc]

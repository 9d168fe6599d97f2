"""`session: task` conversations: the agent's own session id, replayed history, and whose turn it is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, utcnow


class Conversations(StoreBase):
    # -- the agent's id for a conversation (Dify hands one back) ----------------------------------

    def session_remote_id(self, task: str, agent: str) -> str | None:
        """The agent's own session id for a task, if the task last talked to this agent."""
        table = schema.task_sessions
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table.c.remote_id, table.c.agent).where(table.c.task == task)).first()
        return row.remote_id if row is not None and row.agent == agent else None

    def save_session(self, task: str, agent: str, remote_id: str) -> None:
        table = schema.task_sessions
        now = utcnow()
        statement = self._insert(table).values(task=task, agent=agent, remote_id=remote_id, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.task], set_={"agent": agent, "remote_id": remote_id, "updated_at": now}
        )
        with self.engine.begin() as conn:
            conn.execute(statement)

    def clear_session(self, task: str) -> None:
        """Forget a task's remote session id, so the next turn starts a new conversation."""
        with self.engine.begin() as conn:
            conn.execute(schema.task_sessions.delete().where(schema.task_sessions.c.task == task))

    # -- history replayed to stateless endpoints --------------------------------------------------

    def history(self, task: str, turns: int) -> list[tuple[str, str]]:
        """The last `turns` user/assistant pairs of a task's conversation, oldest first."""
        if turns <= 0:
            return []
        table = schema.session_messages
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.role, table.c.content).where(table.c.task == task).order_by(table.c.id.desc()).limit(turns * 2)
            ).all()
        return [(row.role, row.content) for row in reversed(rows)]

    def append_history(self, task: str, run_id: str, messages: Iterable[tuple[str, str]]) -> None:
        now = utcnow()
        rows: Sequence[dict[str, Any]] = [
            {"task": task, "role": role, "content": content, "run_id": run_id, "created_at": now}
            for role, content in messages
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(schema.session_messages.insert(), list(rows))

    # -- one turn at a time -----------------------------------------------------------------------

    def take_turn(self, session_key: str, holder: str, until: dt.datetime, now: dt.datetime) -> bool:
        """Hold a conversation for one turn; False while another execution holds it (its lease
        expires by itself if its process dies)."""
        table = schema.session_leases
        statement = self._insert(table).values(session_key=session_key, holder=holder, lease_until=until)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.session_key],
            set_={"holder": holder, "lease_until": until},
            where=sa.or_(table.c.lease_until < now, table.c.holder == holder),
        ).returning(table.c.holder)
        with self.engine.begin() as conn:
            return conn.execute(statement).scalar() == holder

    def end_turn(self, session_key: str, holder: str) -> None:
        table = schema.session_leases
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.session_key == session_key, table.c.holder == holder))

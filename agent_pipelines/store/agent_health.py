"""Whether each agent is usable: consecutive auth/connection failures, and when to probe it next."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, select_in, utcnow


@dataclass(frozen=True)
class AgentHealth:
    agent: str
    healthy: bool
    consecutive_failures: int
    last_error: str | None
    unhealthy_since: dt.datetime | None
    next_probe_at: dt.datetime | None
    probe_interval_s: float | None


class AgentHealthRecords(StoreBase):
    def agent_health(self, agents: Sequence[str] | None = None) -> dict[str, AgentHealth]:
        table = schema.agent_health
        statement = sa.select(table)
        with self.engine.connect() as conn:
            rows = [row._mapping for row in select_in(conn, statement, table.c.agent, agents)]
        return {
            row["agent"]: AgentHealth(
                agent=row["agent"],
                healthy=bool(row["healthy"]),
                consecutive_failures=row["consecutive_failures"],
                last_error=row["last_error"],
                unhealthy_since=aware(row["unhealthy_since"]),
                next_probe_at=aware(row["next_probe_at"]),
                probe_interval_s=row["probe_interval_s"],
            )
            for row in rows
        }

    def record_agent_failure(
        self, agent: str, error: str, *, threshold: int, first_probe_s: float, now: dt.datetime
    ) -> AgentHealth:
        """Count one more auth/connection failure; the `threshold`-th marks the agent unhealthy."""
        table = schema.agent_health
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(table).where(table.c.agent == agent).with_for_update()).mappings().first()
            failures = (row["consecutive_failures"] if row else 0) + 1
            was_healthy = bool(row["healthy"]) if row else True
            healthy = was_healthy and failures < threshold
            values = {
                "healthy": healthy,
                "consecutive_failures": failures,
                "last_error": error[:2000],
                "updated_at": utcnow(),
            }
            if was_healthy and not healthy:
                values |= {
                    "unhealthy_since": now,
                    "next_probe_at": now + dt.timedelta(seconds=first_probe_s),
                    "probe_interval_s": first_probe_s,
                }
            statement = self._insert(table).values(agent=agent, **values)
            conn.execute(statement.on_conflict_do_update(index_elements=[table.c.agent], set_=values))
        return self.agent_health([agent])[agent]

    def record_agent_success(self, agent: str) -> bool:
        """The agent answered: healthy again. True when it was unhealthy before."""
        table = schema.agent_health
        with self.engine.begin() as conn:
            row = conn.execute(
                table.update()
                .where(table.c.agent == agent, sa.or_(table.c.consecutive_failures > 0, table.c.healthy.is_(False)))
                .values(
                    healthy=True,
                    consecutive_failures=0,
                    unhealthy_since=None,
                    next_probe_at=None,
                    probe_interval_s=None,
                    updated_at=utcnow(),
                )
                .returning(table.c.agent)
            ).first()
        return row is not None

    def claim_probe(self, agent: str, now: dt.datetime, max_interval_s: float) -> bool:
        """Take the next probe of an unhealthy agent (one prober at a time, across processes) and
        push the following one back: the interval doubles up to `max_interval_s`."""
        table = schema.agent_health
        doubled = sa.func.min(table.c.probe_interval_s * 2, max_interval_s) if self.engine.dialect.name == "sqlite" else sa.func.least(table.c.probe_interval_s * 2, max_interval_s)
        with self.engine.begin() as conn:
            row = conn.execute(
                table.update()
                .where(table.c.agent == agent, table.c.healthy.is_(False), table.c.next_probe_at <= now)
                .values(probe_interval_s=doubled, updated_at=utcnow())
                .returning(table.c.probe_interval_s)
            ).first()
            if row is None:
                return False
            conn.execute(
                table.update()
                .where(table.c.agent == agent)
                .values(next_probe_at=now + dt.timedelta(seconds=float(row[0])))
            )
        return True

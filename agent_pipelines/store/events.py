"""Events accepted by the ingress, in arrival order (`seq`)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, utcnow


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    source: str
    type: str
    payload: dict[str, Any]
    received_at: dt.datetime

    def as_template_value(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "source": self.source,
            "type": self.type,
            "payload": self.payload,
            "received_at": self.received_at,
        }


class EventLog(StoreBase):
    def insert_event(self, *, event_id: str, source: str, type: str, payload: dict[str, Any]) -> tuple[StoredEvent, bool]:
        """Store an event durably; a repeated id returns the stored one and False."""
        table = schema.events
        now = utcnow()
        statement = (
            self._insert(table)
            .values(event_id=event_id, source=source, type=type, payload=json.dumps(payload), received_at=now)
            .on_conflict_do_nothing(index_elements=[table.c.event_id])
            .returning(table.c.seq)
        )
        with self.engine.begin() as conn:
            seq = conn.execute(statement).scalar()
        if seq is not None:
            return StoredEvent(seq, event_id, source, type, payload, now), True
        existing = self.get_event(event_id)
        assert existing is not None
        return existing, False

    def get_event(self, event_id: str) -> StoredEvent | None:
        found = self._events(schema.events.c.event_id == event_id, limit=1)
        return found[0] if found else None

    def last_event_seq_before(self, moment: dt.datetime) -> int:
        """The newest event `seq` received before `moment` (0 when none)."""
        table = schema.events
        with self.engine.connect() as conn:
            seq = conn.execute(sa.select(sa.func.max(table.c.seq)).where(table.c.received_at < moment)).scalar()
        return int(seq or 0)

    def newest_event_seq(self) -> int:
        """A cheap poll: the primary key's maximum is read from the index."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(schema.events.c.seq))).scalar() or 0)

    def events_after(self, seq: int, limit: int = 500) -> list[StoredEvent]:
        return self._events(schema.events.c.seq > seq, limit=limit)

    def _events(self, where: sa.ColumnElement[bool], limit: int) -> list[StoredEvent]:
        table = schema.events
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(where).order_by(table.c.seq).limit(limit)).mappings().all()
        return [
            StoredEvent(
                seq=row["seq"],
                event_id=row["event_id"],
                source=row["source"],
                type=row["type"],
                payload=json.loads(row["payload"]),
                received_at=aware(row["received_at"]),  # type: ignore[arg-type]
            )
            for row in rows
        ]

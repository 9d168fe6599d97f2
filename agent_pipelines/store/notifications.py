"""The notification outbox: messages waiting for delivery, folded per rate window, and their attempts.

A message is written before anything is sent, so a crash between detecting an event and
delivering it loses nothing; the row then records every attempt until it is sent or given up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware

PENDING = "pending"  # waiting for its first or next attempt (`next_attempt_at`)
SENT = "sent"
GAVE_UP = "gave_up"  # `max_attempts` failed
SKIPPED = "skipped"  # never attempted: the channel is gone from the catalog or its URL variable is unset
OUTBOX_STATUSES = (PENDING, SENT, GAVE_UP, SKIPPED)


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    dedup_key: str
    channel: str
    subject: str
    family: str
    kind: str
    latest_kind: str
    task: str | None
    agent: str | None
    title: str
    body: str
    latest_event: str
    window_start: dt.datetime
    window_s: float
    last_event_at: dt.datetime
    suppressed: int
    reported: int
    carried: int
    followed_up: bool
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None

    @property
    def window_end(self) -> dt.datetime:
        return self.window_start + dt.timedelta(seconds=self.window_s)


def _message(row: Mapping[str, Any]) -> OutboxMessage:
    values = dict(row)
    for name in ("window_start", "last_event_at", "next_attempt_at", "created_at", "updated_at", "sent_at"):
        values[name] = aware(values[name])
    values["followed_up"] = bool(values["followed_up"])
    return OutboxMessage(**values)


class NotificationRecords(StoreBase):
    def enqueue_notification(
        self, *, channel: str, subject: str, family: str, kind: str, window_s: float, now: dt.datetime, new: Mapping[str, Any]
    ) -> tuple[int, bool]:
        """Fold the event into the message of its open window, or start a new message (with `new`'s
        columns) when there is none. Returns the message's id and whether it was folded."""
        table = schema.notification_outbox
        with self.engine.begin() as conn:
            latest = (
                conn.execute(
                    sa.select(table)
                    .where(table.c.channel == channel, table.c.subject == subject, table.c.family == family)
                    .order_by(table.c.window_start.desc(), table.c.id.desc())
                    .limit(1)
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            previous = _message(latest) if latest is not None else None
            if previous is not None and now < previous.window_end:
                conn.execute(
                    table.update()
                    .where(table.c.id == previous.id)
                    .values(
                        suppressed=table.c.suppressed + 1,
                        latest_kind=kind,
                        latest_event=new["latest_event"],
                        last_event_at=now,
                        updated_at=now,
                    )
                )
                return previous.id, True
            carried = 0
            if previous is not None:
                if previous.status == SENT:
                    carried = max(previous.suppressed - previous.reported, 0)
                conn.execute(table.update().where(table.c.id == previous.id).values(followed_up=True))
            inserted = conn.execute(
                table.insert()
                .values(
                    dedup_key=f"{channel}|{subject}|{family}|{now.isoformat()}",
                    channel=channel,
                    subject=subject,
                    family=family,
                    kind=kind,
                    latest_kind=kind,
                    window_start=now,
                    window_s=window_s,
                    last_event_at=now,
                    carried=carried,
                    status=PENDING,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                    **new,
                )
                .returning(table.c.id)
            ).scalar_one()
            return int(inserted), False

    def closed_windows_to_follow_up(self, now: dt.datetime, limit: int = 500) -> list[OutboxMessage]:
        """Messages whose window has closed on a different latest event than the one they told
        (a task that failed, then recovered inside the window): the latest one is still owed."""
        table = schema.notification_outbox
        query = (
            sa.select(table)
            .where(table.c.followed_up.is_(False), table.c.latest_kind != table.c.kind, table.c.window_start <= now)
            .order_by(table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [_message(row) for row in conn.execute(query).mappings()]
        return [row for row in rows if row.window_end <= now]

    def mark_followed_up(self, message_id: int) -> None:
        table = schema.notification_outbox
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.id == message_id).values(followed_up=True))

    def due_notifications(self, now: dt.datetime, limit: int = 100) -> list[OutboxMessage]:
        table = schema.notification_outbox
        query = (
            sa.select(table)
            .where(table.c.status == PENDING, table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_message(row) for row in conn.execute(query).mappings()]

    def record_notification_attempt(
        self,
        message_id: int,
        *,
        status: str,
        now: dt.datetime,
        error: str | None = None,
        next_attempt_at: dt.datetime | None = None,
        reported: int | None = None,
        attempted: bool = True,
    ) -> None:
        table = schema.notification_outbox
        values: dict[str, Any] = {"status": status, "last_error": error, "next_attempt_at": next_attempt_at, "updated_at": now}
        if attempted:
            values["attempts"] = table.c.attempts + 1
        if status == SENT:
            values["sent_at"] = now
        if reported is not None:
            values["reported"] = reported
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.id == message_id).values(**values))

    def notifications(self, statuses: Sequence[str] | None = None, limit: int = 50) -> list[OutboxMessage]:
        """The newest messages first, optionally of some statuses only."""
        table = schema.notification_outbox
        query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if statuses:
            query = query.where(table.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return [_message(row) for row in conn.execute(query).mappings()]

"""One notification tick: detect, route into the outbox, follow up closed windows, deliver.

The clock is passed in (windows, retries and budgets are decided on its `now`), so tests move
time instead of waiting for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.notifications.delivery import DeliveryReport, deliver_due
from agent_pipelines.notifications.detection import DetectionCursor, Detector
from agent_pipelines.notifications.events import Event
from agent_pipelines.notifications.outbox import EnqueueReport, enqueue, follow_up
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock
from agent_pipelines.store import StateStore


@dataclass(frozen=True)
class TickReport:
    events: list[Event]
    queued: EnqueueReport
    delivery: DeliveryReport

    def summary(self) -> str:
        q = self.queued
        return (
            f"{len(self.events)} event(s): {q.queued} message(s) queued, {q.folded} folded into open windows, "
            f"{q.unrouted} unrouted; delivery: {self.delivery.summary()}"
        )


class NotificationService:
    def __init__(self, catalog: Catalog, store: StateStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock

    def tick(self, cursor: DetectionCursor, *, delivery_budget_s: float = 20.0) -> TickReport:
        """Moves `cursor` on; the caller stores it once the tick returns."""
        now: dt.datetime = self.clock.now()
        events = Detector(self.catalog, self.store).detect(cursor, now)
        queued = enqueue(self.catalog, self.store, events, now) + follow_up(self.catalog, self.store, now)
        delivery = deliver_due(
            self.store, self.catalog.notifications.channels, self.catalog.notifications.delivery, now, budget_s=delivery_budget_s
        )
        return TickReport(events, queued, delivery)

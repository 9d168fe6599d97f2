"""Events into the outbox: one message per channel, subject and family per rate window.

The first event of a window becomes a message at once; repeats inside the window are folded
into it (counted, and the latest kept), so a flapping task sends one message per window. When
a window closes on another event than the one its message told (failed, then recovered), the
latest one is sent as a follow-up: the last word a channel hears is the current state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.notifications import render
from agent_pipelines.notifications.events import Event
from agent_pipelines.notifications.routing import targets_for
from agent_pipelines.store import StateStore


@dataclass(frozen=True)
class EnqueueReport:
    queued: int = 0  # new messages
    folded: int = 0  # repeats folded into an open window
    unrouted: int = 0  # events no channel wants

    def __add__(self, other: EnqueueReport) -> EnqueueReport:
        return EnqueueReport(self.queued + other.queued, self.folded + other.folded, self.unrouted + other.unrouted)


def enqueue(catalog: Catalog, store: StateStore, events: Iterable[Event], now: dt.datetime) -> EnqueueReport:
    queued = folded = unrouted = 0
    for event in events:
        targets = targets_for(catalog, event)
        if not targets:
            unrouted += 1
        for target in targets:
            _id, was_folded = store.enqueue_notification(
                channel=target.channel,
                subject=event.subject,
                family=event.family,
                kind=event.kind,
                window_s=target.window_s,
                now=now,
                new=_message_fields(event),
            )
            folded += was_folded
            queued += not was_folded
    return EnqueueReport(queued, folded, unrouted)


def follow_up(catalog: Catalog, store: StateStore, now: dt.datetime) -> EnqueueReport:
    """Send the latest event of each window that closed on a different one than it told."""
    report = EnqueueReport()
    for message in store.closed_windows_to_follow_up(now):
        latest = Event.from_json(message.latest_event)
        if message.channel not in {t.channel for t in targets_for(catalog, latest)}:
            store.mark_followed_up(message.id)
            report += EnqueueReport(unrouted=1)
            continue
        _id, _folded = store.enqueue_notification(
            channel=message.channel,
            subject=message.subject,
            family=message.family,
            kind=latest.kind,
            window_s=message.window_s,
            now=now,
            new=_message_fields(latest),
        )
        report += EnqueueReport(queued=1)
    return report


def _message_fields(event: Event) -> dict[str, object]:
    """What an outbox row says about the event it tells."""
    return {
        "task": event.task,
        "agent": event.agent,
        "title": render.title(event),
        "body": render.body(event),
        "latest_event": event.to_json(),
    }

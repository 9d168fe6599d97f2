"""Which tasks an event starts: source, type and a simple match on payload fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent_pipelines.catalog.model import EventSubscriptionSpec, TaskSpec
from agent_pipelines.store import StoredEvent

MISSING = object()


def field_at(payload: Any, path: str) -> Any:
    """`a.b.0.c` inside nested dicts and lists; a sentinel when absent."""
    current = payload
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def subscription_matches(subscription: EventSubscriptionSpec, event: StoredEvent) -> bool:
    if subscription.source != event.source:
        return False
    types = subscription.types()
    if "*" not in types and event.type not in types:
        return False
    for path, expected in subscription.match.items():
        actual = field_at(event.payload, path)
        if isinstance(expected, list):
            if actual not in expected:
                return False
        elif actual != expected:
            return False
    return True


def subscribers(tasks: Iterable[TaskSpec], event: StoredEvent) -> list[TaskSpec]:
    return [t for t in tasks if t.enabled and any(subscription_matches(s, event) for s in t.events)]

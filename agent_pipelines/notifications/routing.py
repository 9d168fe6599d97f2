"""Which channels hear about an event: the task's own `notify:`, then its owner's routes.

An agent's health concerns the owners of the tasks that call it; a team budget concerns its
owner; a task budget concerns the task. The most specific rule that sends to a channel sets the
channel's rate window, and a channel is listed once however many rules name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.notifications import DEFAULT_WINDOW_S, NotifySpec, RouteSpec
from agent_pipelines.notifications.events import Event


@dataclass(frozen=True)
class Target:
    channel: str
    window_s: float


Rule = NotifySpec | RouteSpec


def _routes_of(catalog: Catalog, owner: str) -> list[RouteSpec]:
    return [route for route in catalog.notifications.routes if route.matches(owner)]


def task_rules(catalog: Catalog, task: TaskSpec) -> list[Rule]:
    """The task's `notify:` first, then (unless it says `owner_routes: false`) its owner's routes."""
    rules: list[Rule] = []
    if task.notify is not None:
        rules.append(task.notify)
    if task.notify is None or task.notify.owner_routes:
        rules.extend(_routes_of(catalog, task.owner))
    return rules


def late_threshold(catalog: Catalog, task: TaskSpec) -> float | None:
    """Seconds past its due time after which an execution is late (None: lateness is not watched)."""
    for rule in task_rules(catalog, task):
        if "late" in rule.events and rule.late_after is not None:
            return rule.late_after
    return None


def _rules_for(catalog: Catalog, event: Event) -> Iterator[Rule]:
    if event.subject.startswith("task:"):
        task = catalog.tasks.get(event.subject_name)
        if task is not None:
            yield from task_rules(catalog, task)
    elif event.subject.startswith("agent:"):
        owners: list[str] = []
        for task in catalog.tasks.values():
            if task.agent == event.subject_name:
                if task.notify is not None:
                    yield task.notify
                owners.append(task.owner)
        for route in catalog.notifications.routes:
            if route.owner == "*" or route.owner in owners:
                yield route
    elif event.subject.startswith("budget:") and event.owner:
        yield from _routes_of(catalog, event.owner)


def targets_for(catalog: Catalog, event: Event) -> list[Target]:
    """The channels to send `event` to, each with its rate window."""
    wanted = "agent_unhealthy" if event.subject.startswith("agent:") else event.kind
    targets: dict[str, Target] = {}
    for rule in _rules_for(catalog, event):
        if wanted not in rule.events:
            continue
        for channel in rule.channels:
            if channel in catalog.notifications.channels and channel not in targets:
                targets[channel] = Target(channel, rule.window or DEFAULT_WINDOW_S)
    return list(targets.values())

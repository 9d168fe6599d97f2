"""What each kind of run carries, as a dispatcher `Plan`.

- a window run: the due times of its tasks in its window, and the events that arrive in it;
- a catch-up run: executions waiting for a carrier (missed due times the misfire policy catches
  up, claims a dead run never sent, retries whose run is gone);
- an event run: events no window run picked up (the safety net);
- a manual run: the selected tasks, now, with the sample event or upstream output they need.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.dispatcher import EventWindow, Plan
from agent_pipelines.scheduling.planning import followers_in_run, listener_tasks, timed_tasks
from agent_pipelines.scheduling.retries import deadline_for
from agent_pipelines.scheduling.subscriptions import subscribers
from agent_pipelines.scheduling.timing import due_times
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import Execution, StateStore, StoredEvent, status


def window_plan(
    catalog: Catalog,
    store: StateStore,
    start: dt.datetime,
    end: dt.datetime,
    tasks: Collection[str] | None,
    now: dt.datetime,
) -> Plan:
    """The due times of `tasks` (default: every timed task) in [start, end), and the events of
    the window for the listening tasks among them.

    Due times before a task first existed are not this run's (nor anyone's); due times already
    past their misfire grace are left to the misfire policy. A due time whose execution a dead
    run claimed but never sent is taken over (a rescue run re-sends it within its grace).
    """
    wanted = set(tasks) if tasks else None
    timed = [t for t in timed_tasks(catalog) if wanted is None or t.name in wanted]
    first_seen = store.first_seen([t.name for t in timed])
    due: list[tuple[TaskSpec, dt.datetime]] = []
    for task in timed:
        since = max(start, first_seen.get(task.name, start))
        for moment in due_times(task.schedule, since, end):  # type: ignore[arg-type]
            if now.timestamp() <= moment.timestamp() + task.misfire.grace:
                due.append((task, moment))
    keys = [Trigger.scheduled(moment).idempotency_key(task.name) for task, moment in due]
    existing = store.statuses(keys)
    items = []
    for (task, moment), key in zip(due, keys, strict=True):
        state = existing.get(key)
        if state is not None and state not in (status.NOT_SENT, status.RETRYING):
            continue  # claimed or decided already
        items.append(
            WorkItem(
                task=task,
                trigger=Trigger.scheduled(moment),
                fire_at=moment.timestamp(),
                claim="take" if state is not None else "new",
                deadline=deadline_for(task, moment, now),
            )
        )
    carried = followers_in_run(catalog, [t.name for t in timed] + [t.name for t in listener_tasks(catalog) if wanted is None or t.name in wanted])
    listeners = tuple(t.name for t in listener_tasks(catalog) if t.name in carried)
    return Plan(
        items=items,
        carried=carried,
        follow="dispatch",
        events=EventWindow(start, end, listeners) if listeners else None,
        busy_until=end.timestamp(),
    )


def worth_carrying(catalog: Catalog, execution: Execution, now: dt.datetime) -> bool:
    """Whether a catch-up run should take an execution waiting for a carrier. A scheduled due
    time a dead run never sent is worth it only within its grace; after that the misfire policy
    decides it (as missed, or as a catch-up)."""
    task = catalog.regular_tasks.get(execution.task)
    if task is None:
        return False
    if execution.status == status.NOT_SENT and execution.trigger == "schedule" and execution.due_time is not None:
        return now.timestamp() <= execution.due_time.timestamp() + task.misfire.grace
    return True


def recovery_plan(catalog: Catalog, store: StateStore, now: dt.datetime, lead_s: float = 60.0) -> Plan:
    """Executions waiting for a carrier, each at its own time (a retry's next attempt)."""
    waiting = store.waiting_for_carrier(now, now + dt.timedelta(seconds=lead_s))
    items = []
    for execution in waiting:
        task = catalog.regular_tasks.get(execution.task)
        if task is None or not worth_carrying(catalog, execution, now):
            continue
        _name, trigger = Trigger.from_key(execution.idempotency_key)
        event = store.get_event(_event_id_of(execution.idempotency_key)) if trigger.kind == "event" else None
        fire_at = max(now, execution.next_attempt_at or now).timestamp()
        items.append(
            WorkItem(
                task=task,
                trigger=trigger,
                fire_at=fire_at,
                claim="take",
                event=event,
                upstream=dict(execution.upstream),
                deadline=execution.deadline,
                retry_number=execution.attempts if execution.status == status.RETRYING else 0,
            )
        )
    carried = followers_in_run(catalog, [item.task.name for item in items])
    return Plan(items=items, carried=carried, follow="dispatch")


def _event_id_of(key: str) -> str:
    return key.split(":", 3)[3]


def event_plan(catalog: Catalog, store: StateStore, events: Sequence[StoredEvent], now: dt.datetime) -> Plan:
    """The subscribers of these events that nobody has run yet (claims keep it exactly once)."""
    paused = store.paused_tasks()
    listeners = [t for t in listener_tasks(catalog) if t.name not in paused]
    items = [WorkItem.for_event(task, event, now) for event in events for task in subscribers(listeners, event)]
    carried = followers_in_run(catalog, [item.task.name for item in items])
    return Plan(items=items, carried=carried, follow="dispatch")


def manual_plan(
    catalog: Catalog,
    tasks: Sequence[TaskSpec],
    *,
    root_run_id: str,
    now: dt.datetime,
    selection: Collection[str],
    events: Mapping[str, StoredEvent] | None = None,
    variables: Mapping[str, Mapping[str, Any]] | None = None,
    upstream: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Tasks a person launched, now. `upstream[task]` names the upstream executions a task
    reads (the ones this run produced); the others read their upstream's newest output."""
    items = [
        WorkItem(
            task=task,
            trigger=Trigger.manual(root_run_id),
            fire_at=now.timestamp(),
            claim="manual",
            event=(events or {}).get(task.name),
            variables=(variables or {}).get(task.name, {}),
            upstream=(upstream or {}).get(task.name, {}),
            deadline=deadline_for(task, None, now),
        )
        for task in tasks
    ]
    return Plan(items=items, carried=selection, follow="manual")

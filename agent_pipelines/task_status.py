"""One line per task for `agent-pipelines task list` and the catalog asset: trigger and state."""

from __future__ import annotations

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import OneShotScheduleSpec, TaskSpec
from agent_pipelines.store import StateStore
from agent_pipelines.scheduling.triggers import Trigger


def trigger_text(task: TaskSpec) -> str:
    parts = []
    if task.schedule is not None:
        parts.append(task.schedule.describe())
    for subscription in task.events:
        types = ",".join(subscription.types())
        parts.append(f"event {subscription.source}/{types}")
    if task.on_upstream:
        from agent_pipelines.batch.triggers import upstream_assets

        parts.append(f"after {','.join(upstream_assets(task))}")
    if task.is_batch:
        return "; ".join(parts) + " (batch)" if parts else "batch backfill"
    return "; ".join(parts) or "manual"


def task_state(task: TaskSpec, paused: bool, store: StateStore) -> str:
    if not task.enabled:
        return "disabled"
    if paused:
        return "paused"
    if isinstance(task.schedule, OneShotScheduleSpec):
        key = Trigger.scheduled(task.schedule.at).idempotency_key(task.name)
        status = store.statuses([key]).get(key)
        if status == "succeeded":
            return "done"
        if status in ("missed", "failed"):
            return f"done ({status})"
        if status is not None:
            return "firing"
    return "active"


def task_rows(catalog: Catalog, store: StateStore) -> list[tuple[str, ...]]:
    states = store.task_states()
    rows = [("TASK", "TRIGGER", "AGENT", "OWNER", "STATE", "LAST")]
    for task in catalog.tasks.values():
        state = states.get(task.name)
        last = store.executions_for_task(task.name, limit=1)
        last_text = f"{last[0].status} {last[0].due_time.isoformat() if last[0].due_time else ''}".strip() if last else "-"
        rows.append((task.name, trigger_text(task), task.agent or f"fleet {task.fleet}", task.owner, task_state(task, bool(state and state.paused), store), last_text))
    return rows

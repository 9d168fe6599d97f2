"""Pause, resume and run-now per task: one job in the Dagster UI, the same calls from the CLI.

One Dagster schedule per task cannot be toggled at 10,000 tasks, so task state lives in
agent_pipelines' own table and the scheduler consults it. `task_control_job` (jobs/control.py) is
the UI's handle; the CLI calls the same function.
"""

import enum
import getpass
from typing import Any

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.templates import event_payload_fields
from agent_pipelines.store import StateStore



class TaskAction(enum.Enum):
    pause = "pause"
    resume = "resume"
    run_now = "run_now"


def apply_action(
    catalog: Catalog,
    store: StateStore,
    task: str,
    action: TaskAction,
    *,
    reason: str | None = None,
    by: str | None = None,
    variables: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
) -> str:
    """Apply one action; returns a sentence saying what happened. Raises ValueError on bad input."""
    if task not in catalog.tasks:
        known = ", ".join(sorted(catalog.tasks)[:20])
        raise ValueError(f"unknown task {task!r} (known: {known}{', ...' if len(catalog.tasks) > 20 else ''})")
    by = by or getpass.getuser()
    if action is TaskAction.pause:
        store.set_paused(task, True, reason=reason, changed_by=by)
        return f"paused {task}: it will not be triggered until resumed"
    if action is TaskAction.resume:
        store.set_paused(task, False, reason=reason, changed_by=by)
        return f"resumed {task}: due times from now on fire again (missed ones while paused are skipped)"
    if catalog.tasks[task].is_batch:
        raise ValueError(
            f"{task!r} is a batch task: launch its shards as a backfill (UI: asset {task!r} > Materialize "
            f"> all partitions, or `dagster asset materialize --select {task} --partition-range ...`)"
        )
    spec = catalog.tasks[task]
    unknown = set(variables or {}) - set(spec.variables)
    if unknown:
        raise ValueError(f"task {task!r} declares no variables {sorted(unknown)}")
    request: dict[str, Any] = {"variables": variables or {}}
    if spec.events:
        if event is None:
            fields = ", ".join(f'"{name}": ...' for name in event_payload_fields(spec.prompt + (spec.system or "")))
            raise ValueError(
                f"{task!r} is started by events: give a sample event payload to render its prompt, "
                f"e.g. --event '{{{fields}}}'"
            )
        subscription = spec.events[0]
        kind = next((t for t in subscription.types() if t != "*"), "manual")
        request["event"] = {"source": subscription.source, "type": kind, "payload": event}
    elif event is not None:
        raise ValueError(f"{task!r} is not started by events: it takes no --event")
    request_id = store.add_run_request(task, requested_by=by, variables=request)
    return f"run-now request {request_id} for {task}: task_scheduler_sensor launches it within seconds"

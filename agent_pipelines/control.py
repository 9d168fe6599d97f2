"""Pause, resume and run-now per task: one job in the Dagster UI, the same calls from the CLI.

One Dagster schedule per task cannot be toggled at 10,000 tasks, so task state lives in
agent_pipelines' own table and the scheduler consults it. `task_control_job` is the UI's handle
(Launchpad: pick the task and the action); every use is a run, so the run list is the audit log.
"""

import enum
import getpass
from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.store import StateStore

CONTROL_JOB = "task_control_job"


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
    unknown = set(variables or {}) - set(catalog.tasks[task].variables)
    if unknown:
        raise ValueError(f"task {task!r} declares no variables {sorted(unknown)}")
    request_id = store.add_run_request(task, requested_by=by, variables=variables)
    return f"run-now request {request_id} for {task}: task_scheduler_sensor launches it within seconds"


class TaskControlConfig(dg.Config):
    task: str
    action: TaskAction
    reason: str = ""
    variables: dict[str, Any] = {}


def build_control_job(catalog: Catalog) -> dg.JobDefinition:
    @dg.op(name="apply_task_action", description="Pause, resume or run a catalog task now.")
    def apply_task_action(context: dg.OpExecutionContext, config: TaskControlConfig) -> None:
        store = StateStore.for_instance(context.instance)
        try:
            message = apply_action(
                catalog,
                store,
                config.task,
                config.action,
                reason=config.reason or None,
                by=context.run.tags.get("dagster/user") or "dagster-ui",
                variables=config.variables or None,
            )
        except ValueError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from exc
        context.log.info(message)

    @dg.job(
        name=CONTROL_JOB,
        description="Pause, resume or run-now one task. Launchpad: set `task` and `action`.",
        tags={"agent_pipelines/control": "true"},
    )
    def task_control_job() -> None:
        apply_task_action()

    return task_control_job

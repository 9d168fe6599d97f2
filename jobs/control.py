"""`task_control_job`: pause, resume or run a task now from the Dagster UI (Launchpad: set
`task` and `action`). Every use is a run, so the run list is the audit log."""


from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.control import TaskAction, apply_action
from resources.store import StoreResource

CONTROL_JOB = "task_control_job"


class TaskControlConfig(dg.Config):
    task: str
    action: TaskAction
    reason: str = ""
    variables: dict[str, Any] = {}


def build_control_job(catalog: Catalog) -> dg.JobDefinition:
    @dg.op(name="apply_task_action", description="Pause, resume or run a catalog task now.")
    def apply_task_action(context: dg.OpExecutionContext, config: TaskControlConfig, store: StoreResource) -> None:
        try:
            message = apply_action(
                catalog,
                store.for_instance(context.instance),
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

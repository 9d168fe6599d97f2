"""Catalog -> Dagster `Definitions`: assets, jobs, sensors and resources.

Time triggers are not one Dagster schedule per task (those have minute granularity and cost
~5 ms of load time each); `task_scheduler_sensor` plans every due time of every task, and
window runs fire them to the second. Event subscribers are served by the same window runs,
with `event_trigger_sensor` as the safety net.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.control import build_control_job
from agent_pipelines.grouping import find_workflows, group_tasks
from assets.agent_tasks import STATE_STORE_KEY, build_task_group_asset
from assets.batch import SHARD_IO_MANAGER_KEY, build_batch_assets, combined_key, partitions_for
from assets.prompts import build_prompt_assets
from assets.catalog import CATALOG_ASSET_KEY, build_catalog_assets
from resources import AgentResource, StateStoreResource, agent_resource_key
from resources.trigger_dispatcher import TRIGGER_DISPATCHER_KEY, build_trigger_dispatcher
from resources.shard_io_manager import ShardParquetIOManager
from sensors.batch_partitions import build_batch_shards_sensor
from sensors.catalog_health import CATALOG_HEALTH_JOB, build_catalog_health_sensor
from sensors.prompt_quality import build_prompt_quality_sensor
from sensors.events import build_event_sensor
from sensors.scheduler import build_scheduler_sensor

ALL_TASKS_JOB = "agent_tasks_job"


def build_definitions(catalog: Catalog) -> dg.Definitions:
    workflows = find_workflows(catalog)
    groups = group_tasks(catalog, workflows)
    task_assets = [build_task_group_asset(catalog, group) for group in groups]
    batch_assets = [a for task in catalog.batch_tasks.values() for a in build_batch_assets(catalog, task)]
    prompt_assets, (tuning_job, tuning_schedule) = build_prompt_assets(catalog)
    catalog_asset, catalog_check = build_catalog_assets(catalog)
    op_of = {name: group.op_name for group in groups for name in group.tasks}
    workflow_of = {name: wf.name for wf in workflows for name in wf.tasks}
    regular = catalog.regular_tasks
    unit_of = {name: workflow_of.get(name, op_of[name]) for name in regular}

    def variables_config(task: str, variables: dict[str, Any]) -> dict[str, Any]:
        return {"ops": {op_of[task]: {"config": {task: {"variables": variables}}}}}

    catalog_job = dg.define_asset_job(
        CATALOG_HEALTH_JOB,
        selection=dg.AssetSelection.assets(CATALOG_ASSET_KEY),
        description="Materializes the catalog summary and runs the catalog_health check.",
    )
    jobs: list[UnresolvedAssetJobDefinition | dg.JobDefinition] = [catalog_job, build_control_job(catalog)]
    sensors = [build_catalog_health_sensor(catalog, catalog_job)]
    if regular:
        all_tasks = dg.define_asset_job(
            ALL_TASKS_JOB,
            selection=dg.AssetSelection.assets(*regular),
            description="Every task in the catalog; the scheduler's window runs select the due ones.",
        )
        jobs.append(all_tasks)
        sensors.append(build_scheduler_sensor(catalog, all_tasks, unit_of, variables_config))
        if any(task.events for task in catalog.tasks.values()):
            sensors.append(build_event_sensor(catalog, all_tasks))
    followers = [name for name, task in catalog.tasks.items() if task.on_upstream]
    followers += [combined_key(name) for name in catalog.batch_tasks]
    if followers:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "upstream_completion_sensor",
                target=dg.AssetSelection.assets(*followers),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=10,
                run_tags={tags.TRIGGER: "upstream"},
                emit_backfills=False,
                description=(
                    "Runs tasks with `on_upstream: true` after each new output of their upstream tasks, "
                    "and rebuilds each batch task's combined results after its shards change."
                ),
            )
        )
    for name, task in catalog.batch_tasks.items():
        jobs.append(
            dg.define_asset_job(
                f"{name}_batch_job",
                selection=dg.AssetSelection.assets(name),
                partitions_def=partitions_for(catalog, task),
                description=f"Backfill the shards of batch task {name} (one run for all selected shards).",
            )
        )
    jobs.append(tuning_job)
    quality_sensor = build_prompt_quality_sensor(catalog, tuning_job)
    if quality_sensor is not None:
        sensors.append(quality_sensor)
    shards_sensor = build_batch_shards_sensor(catalog)
    if shards_sensor is not None:
        sensors.append(shards_sensor)
    for workflow in workflows:
        jobs.append(
            dg.define_asset_job(
                workflow.job_name,
                selection=dg.AssetSelection.assets(*workflow.tasks),
                description=f"Workflow {' -> '.join(workflow.tasks)}",
                tags={tags.WORKFLOW: workflow.name},
            )
        )

    resources: dict[str, object] = {
        agent_resource_key(agent.name): AgentResource.from_spec(agent) for agent in catalog.agents.values()
    }
    resources[STATE_STORE_KEY] = StateStoreResource()
    resources[TRIGGER_DISPATCHER_KEY] = build_trigger_dispatcher(catalog)
    resources[SHARD_IO_MANAGER_KEY] = ShardParquetIOManager()
    return dg.Definitions(
        assets=[*task_assets, *batch_assets, *prompt_assets, catalog_asset],
        asset_checks=[catalog_check],
        jobs=jobs,
        sensors=sensors,
        schedules=[tuning_schedule],
        resources=resources,
        executor=dg.in_process_executor,
    )

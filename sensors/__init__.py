"""Dagster sensors: the scheduler, the event safety net, catalog health, prompt quality, batch shards and triggers,
agent lifecycle and load, cost and budgets."""


from collections.abc import Mapping
from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from assets.batch import combined_key
from sensors.agent_lifecycle import build_agent_lifecycle_sensor
from sensors.agent_load import build_agent_load_sensor
from sensors.batch_partitions import build_batch_shards_sensor
from sensors.batch_triggers import build_batch_trigger_sensor
from sensors.costs import build_cost_sensor
from sensors.catalog_health import CATALOG_HEALTH_JOB, build_catalog_health_sensor
from sensors.events import build_event_sensor
from sensors.prompt_quality import build_prompt_quality_sensor
from sensors.scheduler import build_scheduler_sensor


def build_sensor_definitions(catalog: Catalog, jobs: Mapping[str, Any]) -> dg.Definitions:
    """`jobs`: the jobs defined elsewhere, by name (the sensors' targets)."""
    from jobs.dispatch import EVENT_JOB
    from agent_pipelines.scheduling.scheduler import CATCHUP_JOB, MANUAL_JOB, SCHEDULED_JOB

    sensors = [build_catalog_health_sensor(catalog, jobs[CATALOG_HEALTH_JOB])]
    if catalog.regular_tasks:
        sensors.append(build_scheduler_sensor(catalog, [jobs[SCHEDULED_JOB], jobs[CATCHUP_JOB], jobs[MANUAL_JOB]]))
    if any(task.events for task in catalog.regular_tasks.values()):
        sensors.append(build_event_sensor(catalog, jobs[EVENT_JOB]))
    for optional in (build_prompt_quality_sensor(catalog), build_batch_shards_sensor(catalog), build_batch_trigger_sensor(catalog, jobs), build_agent_lifecycle_sensor(catalog), build_agent_load_sensor(catalog), build_cost_sensor(catalog)):
        if optional is not None:
            sensors.append(optional)
    if catalog.batch_tasks:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "batch_results_sensor",
                target=dg.AssetSelection.assets(*(combined_key(name) for name in catalog.batch_tasks)),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=10,
                emit_backfills=False,
                description="Rebuilds each batch task's combined results after its shards change.",
            )
        )
    return dg.Definitions(sensors=sensors)

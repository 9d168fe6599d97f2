"""`batch_trigger_sensor`: the Dagster face of `agent_pipelines.batch.triggers`."""

from __future__ import annotations

import dagster as dg

from agent_pipelines.batch.triggers import SENSOR_NAME, BatchCursor, BatchTriggers, batch_job_name
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.ended_runs import settle_ended_runs
from resources.store import StoreResource


def triggered_batch_tasks(catalog: Catalog) -> list[str]:
    return [name for name, t in catalog.batch_tasks.items() if t.schedule is not None or t.events or t.on_upstream]


def build_batch_trigger_sensor(catalog: Catalog, jobs: dict[str, dg.JobDefinition]) -> dg.SensorDefinition | None:
    names = triggered_batch_tasks(catalog)
    if not names:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=[jobs[batch_job_name(name)] for name in names],
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Starts batch tasks on their schedules, events and upstream outputs: one run over all "
            "shards per due time, event or output (run key = the execution's idempotency key), "
            "misfire policies for due times missed while the daemon was down."
        ),
    )
    def batch_trigger_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        state = store.for_instance(context.instance)
        now = SYSTEM_CLOCK.now()
        for run_id, why, count in settle_ended_runs(state, context.instance, now, tasks=sorted(catalog.batch_tasks)):
            context.log.warning(f"run {run_id}: {why}; settled {count} batch execution(s) it held")
        triggers = BatchTriggers(catalog, state)
        requests, cursor = triggers.tick(BatchCursor.parse(context.cursor), now, context.instance)
        for key, why in triggers.report.expired:
            context.log.warning(f"{key}: {why}")
        return dg.SensorResult(run_requests=requests, cursor=cursor.dump())

    return batch_trigger_sensor

"""`task_scheduler_sensor`: the Dagster face of `agent_pipelines.scheduling.scheduler`."""


from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.scheduler import SENSOR_NAME, Scheduler, SchedulerCursor
from resources.store import StoreResource


def build_scheduler_sensor(catalog: Catalog, jobs: list[Any]) -> dg.SensorDefinition:
    """`jobs`: the window, catch-up and manual (asset) jobs the scheduler's run requests name."""

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Creates each window's run ahead of time (its dispatcher fires every due time to the "
            "second), rescues windows whose run died, applies misfire policies, settles runs that "
            "ended holding executions, and launches catch-ups and run-now requests."
        ),
    )
    def task_scheduler_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        scheduler = Scheduler(catalog, store.for_instance(context.instance))
        requests, cursor = scheduler.tick(SchedulerCursor.parse(context.cursor), SYSTEM_CLOCK.now(), context.instance)
        report = scheduler.report
        for run_id, why, count in report.settled_runs:
            context.log.warning(f"run {run_id}: {why}; settled {count} execution(s) it held")
        if report.republished:
            context.log.info(f"reported {report.republished} result(s) whose run ended before publishing them")
        return dg.SensorResult(run_requests=requests, cursor=cursor.dump())

    return task_scheduler_sensor

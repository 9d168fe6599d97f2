"""`budget_sensor`: holds tasks and teams to their daily token budgets (`agent_pipelines.costs`).

Once a minute: a budget over its `per_day` is logged as a warning once per UTC day, and with
`pause: true` its tasks are paused until the next day. The cursor keeps what was warned about.
"""

import json

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.costs import enforce_budgets
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from resources.store import StoreResource

SENSOR_NAME = "budget_sensor"


def build_budget_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    if not catalog.budgets and not any(task.budget for task in catalog.tasks.values()):
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Warns when a task or team spends more than its daily token budget, and pauses it where the budget says so.",
    )
    def budget_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        warned = json.loads(context.cursor) if context.cursor else []
        fresh, warned_now = enforce_budgets(catalog, store.for_instance(context.instance), SYSTEM_CLOCK.now(), warned)
        for overrun in fresh:
            context.log.warning(overrun.describe() + ("; its tasks are paused until tomorrow" if overrun.pause else ""))
        return dg.SensorResult(skip_reason=f"{len(fresh)} new budget overrun(s)", cursor=json.dumps(sorted(warned_now)))

    return budget_sensor

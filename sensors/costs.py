"""`cost_sensor`: today's cost where users look, and the budgets it is held to
(`agent_pipelines.costs`).

Once a minute: a task or team over its daily budget is logged as a warning once per UTC day,
and with `pause: true` its tasks are paused until the next day. Every ten minutes (and at the
turn of the day) an observation on the `agent_catalog` asset carries today's cost per owner
(team) and in total, which the UI plots over time, and a table per owner and per agent.
"""

import datetime as dt
import json

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.costs import cost_report, enforce_budgets
from agent_pipelines.metadata import table
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.publication import CATALOG_ASSET_KEY
from resources.store import StoreResource

SENSOR_NAME = "cost_sensor"
OBSERVE_EVERY = dt.timedelta(minutes=10)


def has_costs(catalog: Catalog) -> bool:
    priced = any(a.pricing or a.cost_per_1k_tokens or (a.lifecycle and a.lifecycle.hourly_cost) for a in catalog.agents.values())
    return priced or bool(catalog.budgets) or any(task.budget for task in catalog.tasks.values())


def build_cost_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    if not has_costs(catalog):
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Today's cost per team on the agent_catalog asset; warns (and pauses, where a budget says so) when a task or team spends more than its daily budget.",
    )
    def cost_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        state = json.loads(context.cursor) if context.cursor else {}
        now = SYSTEM_CLOCK.now()
        state_store = store.for_instance(context.instance)
        fresh, warned = enforce_budgets(catalog, state_store, now, state.get("warned", []))
        for overrun in fresh:
            context.log.warning(overrun.describe() + ("; its tasks are paused until tomorrow" if overrun.pause else ""))
        observed = dt.datetime.fromisoformat(state["observed"]) if state.get("observed") else None
        if observed is None or now - observed >= OBSERVE_EVERY or observed.date() != now.date():
            context.instance.report_runless_asset_event(today_observation(catalog, state_store, now))
            observed = now
        cursor = json.dumps({"warned": sorted(warned), "observed": observed.isoformat()})
        return dg.SensorResult(skip_reason=f"{len(fresh)} new budget overrun(s)", cursor=cursor)

    return cost_sensor


def today_observation(catalog: Catalog, store, now: dt.datetime) -> dg.AssetObservation:  # noqa: ANN001
    by_owner = cost_report(catalog, store, "owner", 1, now)
    by_agent = cost_report(catalog, store, "agent", 1, now)
    metadata = {f"cost_today {row.group}": dg.MetadataValue.float(round(row.total, 6)) for row in by_owner}
    metadata["cost_today_total"] = dg.MetadataValue.float(round(sum(row.total for row in by_owner), 6))
    columns = {"group": "string", "executions": "int", "token_cost": "float", "hours_up": "float", "uptime_cost": "float", "total": "float"}
    for name, rows in (("by_owner", by_owner), ("by_agent", by_agent)):
        metadata[f"today_{name}"] = table(
            columns,
            [
                {"group": r.group, "executions": r.executions, "token_cost": round(r.token_cost, 6), "hours_up": round(r.hours_up, 3), "uptime_cost": round(r.uptime_cost, 6), "total": round(r.total, 6)}
                for r in sorted(rows, key=lambda r: -r.total)
            ],
        )
    return dg.AssetObservation(asset_key=CATALOG_ASSET_KEY, metadata=metadata)

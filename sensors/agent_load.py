"""`agent_load_sensor`: the Dagster face of `agent_pipelines.scheduling.load`.

Every tick it reads each agent's load across all runs from the store; an agent whose figures
changed gets an observation (plotted in the UI), and one whose saturation changed gets a
`not_saturated` evaluation. Its cursor keeps what it last reported.
"""

import json

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.load import agent_loads
from agent_pipelines.scheduling.load_publication import load_observation, saturation_evaluation
from resources.store import StoreResource

SENSOR_NAME = "agent_load_sensor"


def build_agent_load_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    agents = sorted(catalog.agents)
    if not agents or not catalog.regular_tasks:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Shows each agent's requests in flight and waiting, learned limit and latency, and fails its "
        "`not_saturated` check while executions wait too long for it.",
    )
    def agent_load_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        reported = json.loads(context.cursor) if context.cursor else {}
        summaries = agent_loads(store.for_instance(context.instance), agents, SYSTEM_CLOCK.now())
        changed = 0
        for agent, summary in summaries.items():
            figures = [summary.in_flight, summary.queued, summary.limit, summary.latency_ms, summary.skipped]
            saturated_before = reported.get(agent, {}).get("saturated")
            if reported.get(agent, {}).get("figures") != figures:
                context.instance.report_runless_asset_event(load_observation(summary))
                changed += 1
            if saturated_before != summary.saturated:
                context.instance.report_runless_asset_event(saturation_evaluation(agent, summary))
                if summary.saturated:
                    context.log.warning(f"agent {agent} is saturated: {summary.describe()}")
            reported[agent] = {"figures": figures, "saturated": summary.saturated}
        cursor = json.dumps(reported, sort_keys=True)
        return dg.SensorResult(skip_reason=f"{changed} agent(s) changed load; this sensor launches no runs", cursor=cursor)

    return agent_load_sensor

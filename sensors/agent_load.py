"""`agent_load_sensor`: the Dagster face of `agent_pipelines.scheduling.load`.

Every tick it reads each agent's and fleet node's load across all runs from the store; an agent
whose figures changed gets an observation (plotted in the UI), and one whose saturation changed
gets a `not_saturated` evaluation. A fleet whose nodes' figures changed gets an observation on
`fleets/<name>`, and one whose set of saturated nodes changed a `not_saturated` evaluation. Its
cursor keeps what it last reported: agents by name, fleets as `fleets/<name>` (a cursor without
them, from before fleets were reported, reads as "nothing reported yet" for them).
"""

import hashlib
import json
from collections.abc import Mapping

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.load import LoadSummary, agent_loads
from agent_pipelines.scheduling.load_publication import (
    fleet_load_observation,
    fleet_saturation_evaluation,
    load_observation,
    saturated_nodes,
    saturation_evaluation,
)
from agent_pipelines.scheduling.publication import fleet_asset_key
from assets.fleets import fleet_nodes
from resources.store import StoreResource

SENSOR_NAME = "agent_load_sensor"


def build_agent_load_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    """None without anything whose load runs write: agents (called by tasks and batches) or fleets."""
    agents = sorted(catalog.agents)
    fleets = {name: fleet_nodes(fleet) for name, fleet in sorted(catalog.fleets.items())}
    if not (agents or fleets):
        return None
    watched = [*agents, *(node for nodes in fleets.values() for node in nodes)]

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Shows each agent's (and each fleet's nodes') requests in flight and waiting, learned limit and "
        "latency, and fails an agent's (a fleet's) `not_saturated` check while executions wait too long for it (any node).",
    )
    def agent_load_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        reported = json.loads(context.cursor) if context.cursor else {}
        summaries = agent_loads(store.for_instance(context.instance), watched, SYSTEM_CLOCK.now())
        changed = 0
        for agent in agents:
            summary = summaries.get(agent)
            if summary is None:
                continue
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
        for fleet, nodes in fleets.items():
            if not any(node in summaries for node in nodes):
                continue
            key = fleet_asset_key(fleet).to_user_string()
            figures = _fleet_figures(nodes, summaries)
            if reported.get(key, {}).get("figures") != figures:
                context.instance.report_runless_asset_event(fleet_load_observation(fleet, nodes, summaries))
                changed += 1
            saturated = saturated_nodes(nodes, summaries)
            digest = _digest(saturated)
            if reported.get(key, {}).get("saturated") != digest:
                context.instance.report_runless_asset_event(fleet_saturation_evaluation(fleet, nodes, summaries))
                if saturated:
                    context.log.warning(f"fleet {fleet}: {len(saturated)} node(s) saturated: {', '.join(saturated[:5])}")
            reported[key] = {"figures": figures, "saturated": digest}
        cursor = json.dumps(reported, sort_keys=True)
        return dg.SensorResult(skip_reason=f"{changed} agent(s) or fleet(s) changed load; this sensor launches no runs", cursor=cursor)

    return agent_load_sensor


def _fleet_figures(nodes: Mapping[str, int], summaries: Mapping[str, LoadSummary]) -> str:
    """A digest of every node's figures."""
    figures = [
        [node, s.in_flight, s.queued, s.limit, s.max_limit, s.latency_ms, s.saturated] if (s := summaries.get(node)) else [node]
        for node in sorted(nodes)
    ]
    return _digest(figures)


def _digest(value: object) -> str:
    """A short digest: a fleet may have thousands of nodes, the cursor stays small."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]

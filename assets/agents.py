"""Every agent as an asset (`agents/<name>`), with a `healthy` check, a `not_saturated` check and
load observations (agent_pipelines.scheduling.load_publication), and for agents with a
`lifecycle:` a `wakes` check and lifecycle observations (agent_pipelines.lifecycle.publication).
Fleets, whose nodes have no asset each, are in assets/fleets.py.

The dispatcher evaluates the check whenever an agent's state changes (marked unhealthy after
repeated refused connections or credentials, healthy again once it answers). Executing the check
from the UI probes the selected agents now.
"""


import asyncio
from collections.abc import Iterator

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.lifecycle.publication import WAKES_CHECK, wakes_evaluation
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.load import agent_loads
from agent_pipelines.scheduling.load_publication import CHECK_DESCRIPTION, NOT_SATURATED_CHECK, saturation_evaluation
from agent_pipelines.scheduling.publication import HEALTHY_CHECK, agent_asset_key, as_check_result
from resources.agents import AgentsResource
from agent_pipelines.store.lifecycle import LifecycleState
from resources.store import StoreResource


def _auth(agent) -> str:  # noqa: ANN001
    if agent.auth_file:
        return f"file {agent.auth_file}"
    return f"env {agent.auth_env}" if agent.auth_env else "none"


def build_agent_definitions(catalog: Catalog) -> dg.Definitions:
    if not catalog.agents:
        return dg.Definitions()
    specs = [
        dg.AssetSpec(
            key=agent_asset_key(agent.name),
            group_name="agents",
            description=agent.description or f"{agent.kind} agent at {agent.base_url}",
            kinds={agent.kind},
            metadata={
                "base_url": dg.MetadataValue.url(agent.base_url or ""),
                "model": dg.MetadataValue.text(agent.model or "default"),
                "token": dg.MetadataValue.text(_auth(agent)),
                "max_concurrency": dg.MetadataValue.int(agent.max_concurrency),
            },
        )
        for agent in catalog.agents.values()
    ]
    checks = [
        dg.AssetCheckSpec(
            HEALTHY_CHECK,
            asset=agent_asset_key(agent.name),
            description="Requests go to this agent (not skipped after repeated refused connections or credentials).",
        )
        for agent in catalog.agents.values()
    ] + [
        dg.AssetCheckSpec(NOT_SATURATED_CHECK, asset=agent_asset_key(agent.name), description=CHECK_DESCRIPTION)
        for agent in catalog.agents.values()
    ] + [
        dg.AssetCheckSpec(
            WAKES_CHECK,
            asset=agent_asset_key(agent.name),
            description=f"Its last wake ({agent.lifecycle.backend}) brought it up within {agent.lifecycle.ready.timeout:g} s.",
        )
        for agent in catalog.agents.values()
        if agent.lifecycle is not None
    ]

    @dg.multi_asset_check(
        specs=checks, can_subset=True, name="probe_agents", description="Probes the selected agents now; reads their load."
    )
    def probe_agents(context: dg.AssetCheckExecutionContext, store: StoreResource, agents: AgentsResource) -> Iterator[dg.AssetCheckResult]:
        names = [key.asset_key.path[-1] for key in context.selected_asset_check_keys if key.name == HEALTHY_CHECK]
        state = store.for_instance(context.instance)
        lifecycle = state.lifecycle_states()
        for key in context.selected_asset_check_keys:
            if key.name == WAKES_CHECK:
                agent = key.asset_key.path[-1]
                found = lifecycle.get(agent) or LifecycleState(agent, "asleep", SYSTEM_CLOCK.now(), detail="never woken yet")
                yield as_check_result(wakes_evaluation(agent, found))

        saturation = [key.asset_key.path[-1] for key in context.selected_asset_check_keys if key.name == NOT_SATURATED_CHECK]
        if saturation:
            loads = agent_loads(state, saturation, SYSTEM_CLOCK.now())
            for agent in saturation:
                yield as_check_result(saturation_evaluation(agent, loads.get(agent)))

        async def probe_all() -> list:
            async with agents.pool(catalog.agents) as pool:
                return list(await asyncio.gather(*(pool.probe(name) for name in names)))

        for name, error in zip(names, event_loop.run(probe_all()), strict=True):
            if error is None:
                state.record_agent_success(name)
            yield dg.AssetCheckResult(
                asset_key=agent_asset_key(name),
                check_name=HEALTHY_CHECK,
                passed=error is None,
                description="The agent answered the probe." if error is None else f"Probe failed: {error.describe()}",
                metadata={"probed_at": dg.MetadataValue.timestamp(SYSTEM_CLOCK.now())},
            )

    return dg.Definitions(assets=specs, asset_checks=[probe_agents])

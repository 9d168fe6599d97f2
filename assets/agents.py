"""Every agent as an asset (`agents/<name>`), with a `healthy` check.

The dispatcher evaluates the check whenever an agent's state changes (marked unhealthy after
repeated refused connections or credentials, healthy again once it answers). Executing the check
from the UI probes the selected agents now.
"""


import asyncio
from collections.abc import Iterator

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.publication import HEALTHY_CHECK, agent_asset_key
from resources.agents import AgentsResource
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
    ]

    @dg.multi_asset_check(specs=checks, can_subset=True, name="probe_agents", description="Probes the selected agents now.")
    def probe_agents(context: dg.AssetCheckExecutionContext, store: StoreResource, agents: AgentsResource) -> Iterator[dg.AssetCheckResult]:
        names = [key.asset_key.path[-1] for key in context.selected_asset_check_keys]
        state = store.for_instance(context.instance)

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

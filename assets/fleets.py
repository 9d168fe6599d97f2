"""Every fleet as an asset (`fleets/<name>`): its nodes are agents of the catalog's batch tasks
but have no asset each, so their load goes on the fleet's (`agent_load_sensor` observes it with
`agent_pipelines.scheduling.load_publication.fleet_load_metadata`), and so does their
saturation: the fleet's `not_saturated` check fails while any node is saturated. The sensor
evaluates it whenever the set of saturated nodes changes; executing it from the UI reads the
nodes' load now."""

from collections.abc import Iterator

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import FleetSpec
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.load import agent_loads
from agent_pipelines.scheduling.load_publication import FLEET_CHECK_DESCRIPTION, NOT_SATURATED_CHECK, fleet_saturation_evaluation
from agent_pipelines.scheduling.publication import as_check_result, fleet_asset_key
from resources.store import StoreResource


def build_fleet_definitions(catalog: Catalog) -> dg.Definitions:
    if not catalog.fleets:
        return dg.Definitions()
    fleets = {fleet_asset_key(name): fleet_nodes(fleet) for name, fleet in catalog.fleets.items()}
    checks = [dg.AssetCheckSpec(NOT_SATURATED_CHECK, asset=key, description=FLEET_CHECK_DESCRIPTION) for key in fleets]

    @dg.multi_asset_check(specs=checks, can_subset=True, name="read_fleet_loads", description="Reads the selected fleets' node load now.")
    def read_fleet_loads(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[dg.AssetCheckResult]:
        selected = {key.asset_key: fleets[key.asset_key] for key in context.selected_asset_check_keys}
        watched = [node for nodes in selected.values() for node in nodes]
        loads = agent_loads(store.for_instance(context.instance), watched, SYSTEM_CLOCK.now())
        for key, nodes in selected.items():
            yield as_check_result(fleet_saturation_evaluation(key.path[-1], nodes, loads))

    return dg.Definitions(assets=[_fleet_spec(fleet) for fleet in catalog.fleets.values()], asset_checks=[read_fleet_loads])


def fleet_nodes(fleet: FleetSpec) -> dict[str, int]:
    """Each node's agent name and `max_concurrency`."""
    return {node.name: node.max_concurrency for node in fleet.node_specs}


def _fleet_spec(fleet: FleetSpec) -> dg.AssetSpec:
    per_node = fleet.node_specs[0].max_concurrency  # every node shares the fleet's settings
    return dg.AssetSpec(
        key=fleet_asset_key(fleet.name),
        group_name="agents",
        description=fleet.description or f"{len(fleet.node_specs)} {fleet.kind} nodes",
        kinds={fleet.kind},
        metadata={
            "node_count": dg.MetadataValue.int(len(fleet.node_specs)),  # not `nodes`: the observations' table of them
            "max_concurrency_per_node": dg.MetadataValue.int(per_node),
            "max_concurrency": dg.MetadataValue.int(per_node * len(fleet.node_specs)),
            "model": dg.MetadataValue.text(fleet.node_specs[0].model or "default"),
        },
    )

"""Every fleet as an asset (`fleets/<name>`): its nodes are agents of the catalog's batch tasks
but have no asset each, so their load goes on the fleet's (`agent_load_sensor` observes it with
`agent_pipelines.scheduling.load_publication.fleet_load_metadata`)."""

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import FleetSpec
from agent_pipelines.scheduling.publication import fleet_asset_key


def build_fleet_definitions(catalog: Catalog) -> dg.Definitions:
    return dg.Definitions(assets=[_fleet_spec(fleet) for fleet in catalog.fleets.values()])


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

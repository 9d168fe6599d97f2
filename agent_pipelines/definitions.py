"""The code location: `dagster dev -m agent_pipelines.definitions` (see workspace.yaml).

The catalog path comes from $AGENT_PIPELINES_CATALOG (default: the example catalog). Problems in
the catalog never stop the location from loading; they show up on the `agent_catalog` asset.
"""

import dagster as dg

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from sensors.notifications import build_notification_definitions
from sensors.retention import retention_definitions

_catalog = load_catalog()
defs = dg.Definitions.merge(
    build_definitions(_catalog), retention_definitions(_catalog), build_notification_definitions(_catalog)
)

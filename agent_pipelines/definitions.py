"""The code location: `dagster dev -m agent_pipelines.definitions` (see workspace.yaml).

The catalog path comes from $AGENT_PIPELINES_CATALOG (default: the example catalog). Problems in
the catalog never stop the location from loading; they show up on the `agent_catalog` asset.
"""

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions

defs = build_definitions(load_catalog())

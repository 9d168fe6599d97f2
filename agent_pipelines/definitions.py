"""The code location: `dagster dev -m agent_pipelines.definitions` (see workspace.yaml).

The catalog path comes from $AGENT_PIPELINES_CATALOG (default: the example catalog), with each
task's active prompt version from the registry applied. Problems in the catalog never stop the
location from loading; they show up on the `agent_catalog` asset.
"""

from agent_pipelines.factory import build_definitions
from agent_pipelines.prompts.effective import load_effective_catalog

defs = build_definitions(load_effective_catalog())

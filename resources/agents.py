"""The agents as a Dagster resource: the one place agent clients are made, for every call site
(scheduled and manual executions, batch shards, the judge, the tuner)."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.model import AgentSpecBase

AGENTS_KEY = "agents"


class AgentsResource(dg.ConfigurableResource):
    """Builds an `AgentPool` for the catalog's agents (tokens are read per request)."""

    def pool(self, specs: Mapping[str, AgentSpecBase]) -> AgentPool:
        return AgentPool(specs)

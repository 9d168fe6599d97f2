"""Dagster resources: agent clients and agent_pipelines' own storage."""

from resources.agent_resource import AgentConnection, AgentResource, agent_resource_key
from resources.state_store import StateStoreResource

__all__ = ["AgentConnection", "AgentResource", "StateStoreResource", "agent_resource_key"]

"""Dagster resources: the agents, agent_pipelines' own store, and the batch results IO manager."""

from resources.agents import AGENTS_KEY, AgentsResource
from resources.shard_io_manager import ShardParquetIOManager
from resources.store import STORE_KEY, StoreResource

__all__ = ["AGENTS_KEY", "STORE_KEY", "AgentsResource", "ShardParquetIOManager", "StoreResource"]

"""Dagster assets: tasks, agents and fleets, batch tasks, prompt history and tuning, the catalog itself."""

from assets.agents import build_agent_definitions
from assets.batch import build_batch_definitions
from assets.catalog import build_catalog_definitions
from assets.fleets import build_fleet_definitions
from assets.prompts import build_prompt_definitions
from assets.tasks import build_task_definitions

__all__ = [
    "build_agent_definitions",
    "build_batch_definitions",
    "build_catalog_definitions",
    "build_fleet_definitions",
    "build_prompt_definitions",
    "build_task_definitions",
]
